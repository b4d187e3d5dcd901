"""The Open Inference Protocol against the real ssm_server, with stock
clients: Python gRPC (Debian's grpcio) through stubs protoc generates here
from proto/inference (the published protocol's names and numbers), and
curl for REST, HTTPS and tokens. The same input through ssm.v1 Infer,
ModelInfer and REST infer must give the same float32 bits.

Needs protoc and grpc_python_plugin (protobuf-compiler,
protobuf-compiler-grpc) and curl; skipped without them."""

import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

import ssmserve
from conftest import (MODELS, ROOT, WIRE_TOLERANCE, local_server, max_relative_diff, sequence,
                      server_bin)

PROTOC = shutil.which("protoc")
PLUGIN = shutil.which("grpc_python_plugin")
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(not (PROTOC and PLUGIN and CURL),
                                reason="needs protoc, grpc_python_plugin and curl")


@pytest.fixture(scope="module")
def oip(tmp_path_factory):
    """The generated stubs: (messages module, service module)."""
    out = tmp_path_factory.mktemp("oip_stubs")
    protos = ROOT / "proto"
    subprocess.run([PROTOC, f"-I{protos}", f"--python_out={out}", f"--grpc_python_out={out}",
                    f"--plugin=protoc-gen-grpc_python={PLUGIN}",
                    str(protos / "inference" / "grpc_service.proto"),
                    str(protos / "inference" / "model_config.proto")],
                   check=True, capture_output=True)
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("inference.grpc_service_pb2")
        rpc = importlib.import_module("inference.grpc_service_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb, rpc


def http_port(server, scheme="http"):
    """The REST port from the banner (--http_address=127.0.0.1:0)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(rf"Open Inference Protocol REST: {scheme}://127\.0\.0\.1:(\d+)/v2",
                      server.log())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no REST port in the banner:\n{server.log()}")


@pytest.fixture(scope="module")
def server():
    with local_server(flags=["--http_address=127.0.0.1:0"]) as s:
        s.http = http_port(s)
        yield s


def curl(*args, data=None):
    """(status, headers text, body bytes) of one curl call."""
    run = subprocess.run([CURL, "-s", "-S", "--max-time", "30", "-D", "-", *args],
                         input=data, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    head, _, body = run.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, head.decode(), body


def url(server, path):
    return f"http://127.0.0.1:{server.http}{path}"


def infer_request(pb, model, x, raw=True):
    """A ModelInferRequest for x [batch, L, d] float32."""
    x = np.asarray(x, dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                   shape=list(x.shape))
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor])
    if raw:
        request.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    return request


def output_of(response):
    shape = list(response.outputs[0].shape)
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)
    return np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(shape)


def test_every_rpc_through_generated_stubs(server, oip):
    pb, rpc = oip
    with grpc.insecure_channel(server.address) as channel:
        stub = rpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
        assert metadata.name == "ssmserve"
        assert "sequence" in metadata.extensions
        assert stub.ModelReady(pb.ModelReadyRequest(name="s4-demo")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
        model = stub.ModelMetadata(pb.ModelMetadataRequest(name="s4-demo", version="1"))
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
            ("input", "FP32", [-1, -1, 1])]
        assert [(t.name, list(t.shape)) for t in model.outputs] == [("output", [-1, -1, 1])]
        config = stub.ModelConfig(pb.ModelConfigRequest(name="legt-delay")).config
        assert config.name == "legt-delay" and config.max_batch_size == 64
        assert list(config.output[0].dims) == [-1, 3]
        assert config.sequence_batching.max_sequence_idle_microseconds == 300_000_000
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert [(m.name, m.state) for m in index.models] == [
            ("legs-memory", "READY"), ("legt-delay", "READY"), ("s4-demo", "READY")]
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        bad = infer_request(pb, "s4-demo", sequence(10, batch=1))
        bad.inputs[0].datatype = "FP16"
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0].datatype is 'FP16'" in e.value.details()


def test_the_same_bits_through_ssm_v1_grpc_oip_and_rest(server, oip):
    pb, rpc = oip
    x = sequence(1000, batch=4, seed=7)
    with ssmserve.Client(server.address, token="") as client:
        want = client.infer("s4-demo", x)
    with grpc.insecure_channel(server.address) as channel:
        stub = rpc.GRPCInferenceServiceStub(channel)
        for raw in (True, False):
            got = output_of(stub.ModelInfer(infer_request(pb, "s4-demo", x, raw=raw)))
            assert got.tobytes() == want.tobytes(), f"raw={raw}"
    # REST, JSON: floats written as JSON numbers read back exactly.
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().astype(np.float64).tolist()}]})
    status, _, reply = curl("-X", "POST", "-H", "Content-Type: application/json",
                            "--data-binary", "@-", url(server, "/v2/models/s4-demo/infer"),
                            data=body.encode())
    assert status == 200, reply
    out = json.loads(reply)["outputs"][0]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    assert got.tobytes() == want.tobytes()
    # REST, binary tensors both ways.
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    status, head, reply = curl(
        "-X", "POST", "-H", f"Inference-Header-Content-Length: {len(header)}",
        "-H", "Content-Type: application/octet-stream", "--data-binary", "@-",
        url(server, "/v2/models/s4-demo/infer"), data=header + x.astype("<f4").tobytes())
    assert status == 200, reply
    n = int(re.search(r"Inference-Header-Content-Length: (\d+)", head, re.I).group(1))
    assert json.loads(reply[:n])["outputs"][0]["parameters"]["binary_data_size"] == want.nbytes
    assert reply[n:] == want.astype("<f4").tobytes()


def test_a_sequence_streamed_in_chunks_gives_infers_outputs(server, oip):
    pb, rpc = oip
    x = sequence(300, batch=1, seed=3)
    with ssmserve.Client(server.address, token="") as client:
        want = client.infer("s4-demo", x)
    split = [1, 63, 64, 2, 100, 70]

    def requests(sequence_id):
        t = 0
        for i, n in enumerate(split):
            r = infer_request(pb, "s4-demo", x[:, t:t + n], raw=i % 2 == 0)
            if isinstance(sequence_id, str):
                r.parameters["sequence_id"].string_param = sequence_id
            else:
                r.parameters["sequence_id"].int64_param = sequence_id  # as tritonclient sends it
            r.parameters["sequence_start"].bool_param = i == 0
            r.parameters["sequence_end"].bool_param = i + 1 == len(split)
            yield r
            t += n
        # After the end the id is unknown: an in-band error, and the stream goes on.
        late = infer_request(pb, "s4-demo", x[:, :5])
        late.parameters["sequence_id"].int64_param = 12345
        yield late

    with grpc.insecure_channel(server.address) as channel:
        stub = rpc.GRPCInferenceServiceStub(channel)
        for sequence_id in (17, "a-string-id"):
            responses = list(stub.ModelStreamInfer(requests(sequence_id)))
            assert len(responses) == len(split) + 1
            assert all(not r.error_message for r in responses[:-1])
            assert responses[-1].error_message.startswith("INVALID_ARGUMENT: sequence 12345")
            got = np.concatenate([output_of(r.infer_response) for r in responses[:-1]], axis=1)
            assert max_relative_diff(got, want) < WIRE_TOLERANCE


def test_every_rest_route_with_curl(server):
    status, head, body = curl(url(server, "/v2"))
    assert status == 200 and "application/json" in head
    assert json.loads(body)["name"] == "ssmserve"
    assert curl(url(server, "/v2/health/live"))[0] == 200
    assert json.loads(curl(url(server, "/v2/health/ready"))[2]) == {"ready": True}
    for path in ("/v2/models/legt-delay", "/v2/models/legt-delay/versions/1"):
        status, _, body = curl(url(server, path))
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [-1, -1, 3]
    assert curl(url(server, "/v2/models/legt-delay/ready"))[0] == 200
    assert curl(url(server, "/v2/models/nope/ready"))[0] == 400
    status, _, body = curl(url(server, "/v2/models/s4-demo/config"))
    assert status == 200 and json.loads(body)["input"][0]["dims"] == [-1, 1]
    # As Triton's documentation writes it: a POST with no body.
    status, _, body = curl("-X", "POST", url(server, "/v2/repository/index"))
    assert status == 200 and len(json.loads(body)) == 3
    status, _, body = curl("-X", "POST", "-d", '{"inputs": [{"name": "input", "datatype": "FP32", '
                           '"shape": [1, 3, 1], "data": [1, 2, 3]}]}',
                           url(server, "/v2/models/legt-delay/versions/1/infer"))
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 3, 3]
    # Errors: the protocol's error body and the status of the code.
    for args, want in (((url(server, "/v2/models/nope"),), 404),
                       (("-X", "POST", "-d", "{", url(server, "/v2/models/s4-demo/infer")), 400),
                       (("-X", "PUT", "-d", "{}", url(server, "/v2/models/s4-demo/infer")), 405),
                       ((url(server, "/v3"),), 404)):
        status, _, body = curl(*args)
        assert status == want, (args, body)
        assert "error" in json.loads(body)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("oip_pki")
    subprocess.run(["bash", str(ROOT / "tests" / "e2e" / "make_test_pki.sh"), str(d)], check=True,
                   capture_output=True)
    return d


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_https_tokens_client_certificates_and_rotation(oip, pki, tmp_path):
    pb, rpc = oip
    token = "oip-secret"
    callers = tmp_path / "callers.json"
    callers.write_text(json.dumps({"callers": [
        {"principal": "alice", "token_sha256": [hashlib.sha256(token.encode()).hexdigest()],
         "scopes": ["run:*"]},
        {"principal": "svc-b", "cert_san": ["client-b.test"], "scopes": ["run:legt-*"]}]}))
    # The served files are copies, so the test can rotate them.
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki / "server.pem", cert)
    shutil.copy(pki / "server.key", key)
    flags = [f"--tls_cert={cert}", f"--tls_key={key}", f"--tls_client_ca={pki / 'ca.pem'}",
             "--tls_client_auth=request", "--tls_refresh=1s", f"--auth_callers={callers}",
             "--http_address=127.0.0.1:0"]
    s = ssmserve.LocalServer(server_bin(), model_repository=str(MODELS), flags=flags)
    # Its readiness probe speaks plaintext gRPC: wait for the banner instead,
    # printed once both ports listen.
    s.start(wait=False)
    with s:
        port = http_port(s, "https")
        https = f"https://127.0.0.1:{port}"
        ca = ["--cacert", str(pki / "ca.pem")]
        body = '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 1], "data": [1, 2]}]}'
        assert curl(*ca, f"{https}/v2/health/live")[0] == 200
        assert curl(*ca, "-X", "POST", "-d", body, f"{https}/v2/models/s4-demo/infer")[0] == 401
        assert curl(*ca, "-H", f"Authorization: Bearer {token}", "-X", "POST", "-d", body,
                    f"{https}/v2/models/s4-demo/infer")[0] == 200
        # A client certificate names svc-b, who may run legt-* only.
        mtls = [*ca, "--cert", str(pki / "client-b.pem"), "--key", str(pki / "client-b.key")]
        assert curl(*mtls, "-X", "POST", "-d", body, f"{https}/v2/models/legt-delay/infer")[0] == 200
        assert curl(*mtls, "-X", "POST", "-d", body, f"{https}/v2/models/s4-demo/infer")[0] == 403
        # Plaintext to the TLS port gets no answer.
        plain = subprocess.run([CURL, "-s", "--max-time", "5", f"http://127.0.0.1:{port}/v2"],
                               capture_output=True)
        assert plain.returncode != 0 or not plain.stdout.startswith(b"{")
        # gRPC over TLS with the token, through the generated stub.
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        with grpc.secure_channel(s.address, creds) as channel:
            stub = rpc.GRPCInferenceServiceStub(channel)
            r = stub.ModelInfer(infer_request(pb, "legt-delay", np.ones((1, 4, 1))),
                                metadata=[("authorization", f"Bearer {token}")])
            assert list(r.outputs[0].shape) == [1, 4, 3]
        # Rotation: the other CA's certificate is served within the refresh.
        shutil.copy(pki / "server2.key", tmp_path / "next.key")
        shutil.copy(pki / "server2.pem", tmp_path / "next.pem")
        (tmp_path / "next.pem").replace(cert)
        (tmp_path / "next.key").replace(key)
        other = ["--cacert", str(pki / "other-ca.pem")]
        deadline = time.monotonic() + 10
        while curl_ok(*other, f"{https}/v2/health/live") is False:
            assert time.monotonic() < deadline, "the rotated certificate was not served"
            time.sleep(0.2)


def curl_ok(*args):
    run = subprocess.run([CURL, "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          *args], capture_output=True)
    return run.returncode == 0 and run.stdout == b"200"

