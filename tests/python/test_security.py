"""The client's security options: TLS with a CA, a client certificate
(mTLS), the server name to verify, and the bearer token (argument or
SSM_TOKEN) on every call.

These run against a stand-in: a gRPC server in this process implementing
ssm.v1's Inference and Math services just enough, over plaintext, TLS or
mTLS with certificates made here by openssl, recording the metadata and
the client certificate each call arrives with, so what is tested is what
the client puts on the wire, byte for byte. test_security_server.py runs
the same options against the real ssm_server."""

import asyncio
import shutil
import subprocess
from concurrent import futures

import grpc
import numpy as np
import pytest

import ssmserve
import ssmserve.aio
from ssmserve._stubs import pb, rpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for the name ssm.test (not 127.0.0.1),
    a client certificate (CN alice) from the same CA, and a stranger CA."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "stranger"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            "-subj", f"/CN={ca}", "-days", "2")
    for name, cn, ext in (("server", "ssm.test", "subjectAltName=DNS:ssm.test"),
                          ("client", "alice", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return d


class Recorder(rpc.InferenceServicer, rpc.MathServicer):
    """Answers ListModels, StreamInfer (open + echo-sized zero outputs) and
    BuildHippo; remembers each call's metadata and client certificate."""

    def __init__(self):
        self.calls = []

    def _note(self, method, context):
        auth = context.auth_context()
        self.calls.append({
            "method": method,
            "authorization": dict(context.invocation_metadata()).get("authorization"),
            "client_cn": [v.decode() for v in auth.get("x509_common_name", [])],
        })

    def ListModels(self, request, context):
        self._note("ListModels", context)
        return pb.ListModelsResponse(models=[pb.ModelStatus(name="stand-in", versions=[1])])

    def StreamInfer(self, requests, context):
        self._note("StreamInfer", context)
        for r in requests:
            if r.HasField("open"):
                yield pb.StreamResponse(opened=pb.StreamOpened(
                    session_id="s-1", model="stand-in", version=1, batch=1, d_input=1,
                    d_output=1))
            else:
                yield pb.StreamResponse(output=pb.Tensor(shape=list(r.chunk.shape),
                                                         values=r.chunk.values),
                                        position=r.chunk.shape[1])

    def BuildHippo(self, request, context):
        self._note("BuildHippo", context)
        m = pb.Matrix(rows=1, cols=1, values=[-1.0])
        return pb.BuildHippoResponse(a=m, b=m, a_bar=m, b_bar=m)


@pytest.fixture
def stand_in(pki):
    """start(mode) -> (recorder, address); mode: plain, tls or mtls."""
    servers = []

    def start(mode):
        recorder = Recorder()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rpc.add_InferenceServicer_to_server(recorder, server)
        rpc.add_MathServicer_to_server(recorder, server)
        if mode == "plain":
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
                root_certificates=(pki / "ca.crt").read_bytes() if mode == "mtls" else None,
                require_client_auth=mode == "mtls")
            port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        servers.append(server)
        return recorder, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(grace=None)


def exercise(client):
    """One unary call, one stream, one Math call."""
    assert [m.name for m in client.models()] == ["stand-in"]
    with client.session("stand-in") as s:
        assert s.step(np.array([0.25], np.float32)) == pytest.approx([0.25])
    client.hippo("legs", 1)


def test_token_goes_with_every_call(stand_in, monkeypatch):
    recorder, address = stand_in("plain")
    monkeypatch.delenv("SSM_TOKEN", raising=False)
    with ssmserve.Client(address, token="s3cret-token") as c:
        exercise(c)
    assert [c["method"] for c in recorder.calls] == ["ListModels", "StreamInfer", "BuildHippo"]
    assert {c["authorization"] for c in recorder.calls} == {"Bearer s3cret-token"}

    # From the environment; token="" sends none, whatever the environment says.
    recorder.calls.clear()
    monkeypatch.setenv("SSM_TOKEN", "from-env")
    with ssmserve.Client(address) as c:
        exercise(c)
    with ssmserve.Client(address, token="") as c:
        c.models()
    assert [c["authorization"] for c in recorder.calls] == ["Bearer from-env"] * 3 + [None]


def test_bad_options_are_refused_before_connecting(pki):
    with pytest.raises(ssmserve.InvalidArgument, match="printable ASCII"):
        ssmserve.Client("127.0.0.1:1", token="line\n")
    with pytest.raises(ssmserve.InvalidArgument, match="both cert and key"):
        ssmserve.Client("127.0.0.1:1", ca=pki / "ca.crt", cert=pki / "client.crt")
    with pytest.raises(ssmserve.InvalidArgument, match="needs TLS"):
        ssmserve.Client("127.0.0.1:1", server_name="ssm.test")
    with pytest.raises(FileNotFoundError):
        ssmserve.Client("127.0.0.1:1", ca=pki / "missing.crt")


def test_tls_verifies_the_server(stand_in, pki):
    recorder, address = stand_in("tls")
    # The CA (as a path, or its PEM bytes) and the name in the certificate.
    with ssmserve.Client(address, ca=pki / "ca.crt", server_name="ssm.test", token="t") as c:
        exercise(c)
    with ssmserve.Client(address, ca=(pki / "ca.crt").read_bytes(), server_name="ssm.test",
                         token="") as c:
        c.models()
    assert [c["authorization"] for c in recorder.calls] == ["Bearer t"] * 3 + [None]
    assert all(c["client_cn"] == [] for c in recorder.calls)
    # Refused: another CA; the right CA but a name the certificate lacks;
    # plaintext to a TLS port.
    for kwargs in ({"ca": pki / "stranger.crt", "server_name": "ssm.test"},
                   {"ca": pki / "ca.crt"},
                   {}):
        with ssmserve.Client(address, timeout=3.0, token="", **kwargs) as c:
            with pytest.raises(ssmserve.Unavailable):
                c.models()
    assert len(recorder.calls) == 4


def test_mtls_presents_the_client_certificate(stand_in, pki):
    recorder, address = stand_in("mtls")
    with ssmserve.Client(address, ca=pki / "ca.crt", cert=pki / "client.crt",
                         key=pki / "client.key", server_name="ssm.test", token="") as c:
        exercise(c)
    assert [c["client_cn"] for c in recorder.calls] == [["alice"]] * 3
    with ssmserve.Client(address, ca=pki / "ca.crt", server_name="ssm.test", timeout=3.0,
                         token="") as c:
        with pytest.raises(ssmserve.Unavailable):
            c.models()
    assert len(recorder.calls) == 3


def test_asyncio_client_has_the_same_options(stand_in, pki, monkeypatch):
    recorder, address = stand_in("mtls")
    monkeypatch.setenv("SSM_TOKEN", "async-token")

    async def main():
        async with ssmserve.aio.Client(address, ca=pki / "ca.crt", cert=pki / "client.crt",
                                       key=pki / "client.key", server_name="ssm.test") as c:
            assert [m.name for m in await c.models()] == ["stand-in"]
            async with c.session("stand-in") as s:
                assert await s.step(np.array([0.5], np.float32)) == pytest.approx([0.5])
            await c.hippo("legs", 1)

    asyncio.run(main())
    assert [(c["method"], c["authorization"], c["client_cn"]) for c in recorder.calls] == [
        ("ListModels", "Bearer async-token", ["alice"]),
        ("StreamInfer", "Bearer async-token", ["alice"]),
        ("BuildHippo", "Bearer async-token", ["alice"]),
    ]
