#!/usr/bin/python3
"""The Open Inference Protocol against ssm.v1 on the same server and model:
unary calls (ssm.v1 Infer, OIP ModelInfer raw and typed, REST binary and
JSON) and streams (ssm.v1 StreamInfer, OIP ModelStreamInfer as one
sequence), lock-step and pipelined.

    /usr/bin/python3 bench/oip_load.py [--server build/server/ssm_server]
        [--model s4-demo] [--batch 8] [--length 4096] [--calls 10] [--steps 2000]

Starts its own ssm_server on free loopback ports (killed at the end). One
Python client drives every protocol the same way, so the client's own cost
is the same on every row; the unary rows also give the server's own time
per call (ssm_rpc_latency_seconds, arrival to status), which no client
cost touches. Needs Debian's python3-grpcio, -protobuf, -numpy, protoc and
grpc_python_plugin; run from a built tree (the ssmserve package's stubs).
"""

import argparse
import http.client
import importlib
import json
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client" / "python"))
import ssmserve  # noqa: E402
from ssmserve._stubs import pb as v1, rpc as v1_rpc  # noqa: E402


def oip_stubs(out):
    protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    subprocess.run([protoc, f"-I{ROOT / 'proto'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", f"--plugin=protoc-gen-grpc_python={plugin}",
                    str(ROOT / "proto/inference/grpc_service.proto"),
                    str(ROOT / "proto/inference/model_config.proto")], check=True)
    sys.path.insert(0, str(out))
    return (importlib.import_module("inference.grpc_service_pb2"),
            importlib.import_module("inference.grpc_service_pb2_grpc"))


def metric(port, name, rpc):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    m = re.search(rf'^{name}{{rpc="{re.escape(rpc)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def server_cpu_ns(pid):
    """CPU time of every thread of the server so far, in ns (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def unary_table(rows, calls, metrics_port):
    """Round-robin over the rows, so the machine's drift touches each alike:
    per row (median client ms, mean server ms)."""
    for _, fn, _ in rows:
        fn()
        fn()  # warm: kernels cached, connections up
    client = {name: [] for name, _, _ in rows}
    server = {name: [] for name, _, _ in rows}
    for _ in range(calls):
        for name, fn, rpc in rows:
            s0 = metric(metrics_port, "ssm_rpc_latency_seconds_sum", rpc)
            t = time.perf_counter()
            fn()
            client[name].append(time.perf_counter() - t)
            server[name].append(metric(metrics_port, "ssm_rpc_latency_seconds_sum", rpc) - s0)
    return {name: (float(np.median(client[name])), float(np.median(server[name])))
            for name, _, _ in rows}


class LockStep:
    """A request iterator fed one request at a time."""

    def __init__(self):
        self.q = queue.Queue()

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            yield item


def stream_rates(call, requests, lock_step, pid):
    """(steps/s, p50 ms, p99 ms, server CPU us per request) of one stream
    over `requests`."""
    cpu0 = server_cpu_ns(pid)
    rate, p50, p99 = stream_run(call, requests, lock_step)
    return rate, p50, p99, (server_cpu_ns(pid) - cpu0) / 1e3 / len(requests)


def stream_run(call, requests, lock_step):
    if lock_step:
        feed = LockStep()
        responses = call(iter(feed))
        lat = []
        t0 = time.perf_counter()
        for r in requests:
            t = time.perf_counter()
            feed.q.put(r)
            next(responses)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        feed.q.put(None)
        for _ in responses:
            pass
        lat.sort()
        return len(requests) / total, 1e3 * lat[len(lat) // 2], 1e3 * lat[int(len(lat) * 0.99)]
    t0 = time.perf_counter()
    n = sum(1 for _ in call(iter(requests)))
    assert n == len(requests)
    return n / (time.perf_counter() - t0), None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=str(ROOT / "build/server/ssm_server"))
    ap.add_argument("--model", default="s4-demo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="oip_load."))
    pb, rpc = oip_stubs(tmp)
    metrics_port, http_port = ssmserve.free_port(), ssmserve.free_port()
    server = ssmserve.LocalServer(args.server, model_repository=str(ROOT / "models"),
                                  flags=[f"--metrics_port={metrics_port}",
                                         f"--http_address=127.0.0.1:{http_port}"])
    with server, grpc.insecure_channel(server.address, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]) as channel:
        ssm = v1_rpc.InferenceStub(channel)
        oip = rpc.GRPCInferenceServiceStub(channel)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((args.batch, args.length, 1)).astype(np.float32)
        shape = list(x.shape)

        v1_request = v1.InferRequest(model=args.model,
                                     input=v1.Tensor(shape=shape, values=x.ravel()))
        raw_request = pb.ModelInferRequest(
            model_name=args.model,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                          shape=shape)],
            raw_input_contents=[x.tobytes()])
        typed_request = pb.ModelInferRequest(
            model_name=args.model,
            inputs=[pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=shape,
                contents=pb.InferTensorContents(fp32_contents=x.ravel()))])
        header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": "output",
                                          "parameters": {"binary_data": True}}]}).encode()
        json_body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                            "shape": shape,
                                            "data": x.ravel().astype(float).tolist()}]}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)

        def rest(body, headers):
            conn.request("POST", f"/v2/models/{args.model}/infer", body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, data[:200]
            return data

        def rest_json():
            return json.loads(rest(json_body, {"Content-Type": "application/json"}))

        rows = [
            ("ssm.v1 Infer", lambda: ssm.Infer(v1_request), "Infer"),
            ("OIP ModelInfer, raw", lambda: oip.ModelInfer(raw_request), "ModelInfer"),
            ("OIP ModelInfer, typed", lambda: oip.ModelInfer(typed_request), "ModelInfer"),
            ("REST infer, binary", lambda: rest(header + x.tobytes(), {
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream"}), "REST ModelInfer"),
            ("REST infer, JSON", rest_json, "REST ModelInfer"),
        ]
        print(f"unary, {args.model}, batch {args.batch} x {args.length} steps, "
              f"median of {args.calls} calls each (round-robin):")
        print(f"  {'call':24} {'client ms':>10} {'server ms':>10}")
        for name, (client_s, server_s) in unary_table(rows, args.calls, metrics_port).items():
            print(f"  {name:24} {1e3 * client_s:10.1f} {1e3 * server_s:10.1f}")

        step = rng.standard_normal((1, 1, 1)).astype(np.float32)
        v1_requests = [v1.StreamRequest(open=v1.StreamOpen(model=args.model))] + [
            v1.StreamRequest(chunk=v1.Tensor(shape=[1, 1, 1], values=step.ravel()))
            for _ in range(args.steps)]

        def oip_requests(sequence_id):
            out = []
            for i in range(args.steps):
                r = pb.ModelInferRequest(
                    model_name=args.model,
                    inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                                  shape=[1, 1, 1])],
                    raw_input_contents=[step.tobytes()])
                r.parameters["sequence_id"].int64_param = sequence_id
                r.parameters["sequence_start"].bool_param = i == 0
                r.parameters["sequence_end"].bool_param = i + 1 == args.steps
                out.append(r)
            return out

        print(f"\nstreams, {args.model}, {args.steps} single-step requests on one stream:")
        print(f"  {'stream':42} {'steps/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'server CPU us/step':>18}")
        for lock_step in (True, False):
            mode = "lock-step" if lock_step else "pipelined"
            for name, call, requests in (
                    ("ssm.v1 StreamInfer", ssm.StreamInfer, v1_requests),
                    ("OIP ModelStreamInfer (sequence)", oip.ModelStreamInfer,
                     oip_requests(1 + lock_step))):
                rate, p50, p99, cpu = stream_rates(call, requests, lock_step, server.pid)
                lat = f"{p50:7.2f} {p99:7.2f}" if p50 is not None else f"{'':7} {'':7}"
                print(f"  {name + ', ' + mode:42} {rate:8.0f} {lat} {cpu:18.1f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
