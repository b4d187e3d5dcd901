#!/usr/bin/python3
"""The ssmserve gRPC API from Python: list the models, run one Infer on
legt-delay, then stream a few steps through a session and check that they
match the unary call.

Needs Debian's python3-grpcio and python3-protobuf, and the stubs the build
generates from proto/ (<build>/client/python/gen):

    /usr/bin/python3 client/python/ssm_example.py --address=127.0.0.1:50051

Exits 0 when every call succeeded and the streamed outputs equal the unary
ones (to float32 precision), 1 otherwise.
"""

import argparse
import math
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def find_stubs(explicit):
    """The generated-stubs folder: --stubs, else a build folder's."""
    candidates = [pathlib.Path(explicit)] if explicit else [
        REPO / "build" / "client" / "python" / "gen",
        REPO / "build-dev" / "client" / "python" / "gen",
    ]
    for c in candidates:
        if (c / "ssm" / "v1" / "ssm_service_pb2_grpc.py").exists():
            return c
    sys.exit("generated stubs not found in %s; build the project first "
             "(target ssm_python_stubs) or pass --stubs"
             % ", ".join(str(c) for c in candidates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--stubs", help="folder of the generated stubs")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds for each call")
    args = parser.parse_args()

    sys.path.insert(0, str(find_stubs(args.stubs)))
    import grpc  # noqa: E402  (after the path is set up, like the stubs)
    from ssm.v1 import ssm_service_pb2 as pb
    from ssm.v1 import ssm_service_pb2_grpc as rpc

    channel = grpc.insecure_channel(args.address)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    stub = rpc.InferenceStub(channel)

    # 1. The models.
    models = stub.ListModels(pb.ListModelsRequest(), timeout=args.timeout)
    print("models:")
    for m in models.models:
        status = m.error or "ready"
        print("  %-12s versions %s  %s" % (m.name, list(m.versions), status))

    # 2. One unary call: legt-delay reads its input back 16, 32 and 63.5
    #    steps later. A sine of period 100 steps, 200 steps long.
    length = 200
    x = [math.sin(2 * math.pi * t / 100) for t in range(length)]
    reply = stub.Infer(
        pb.InferRequest(model="legt-delay",
                        input=pb.Tensor(shape=[1, length, 1], values=x)),
        timeout=args.timeout)
    shape = list(reply.output.shape)
    y = list(reply.output.values)
    d_out = shape[2]
    print("Infer legt-delay: input [1, %d, 1] -> output %s (version %d)"
          % (length, shape, reply.version))
    print("  step   input   y(16 back)  input 16 back")
    for t in (80, 120, 160, 199):
        print("  %4d  %7.4f  %10.4f  %13.4f" % (t, x[t], y[t * d_out], x[t - 16]))

    # 3. A stream: open, then five single steps (sent as a generator, so
    #    they are pipelined), the state asked for with the last one.
    steps = 5

    def requests():
        yield pb.StreamRequest(open=pb.StreamOpen(model="legt-delay", batch=1))
        for t in range(steps):
            yield pb.StreamRequest(
                chunk=pb.Tensor(shape=[1, 1, 1], values=[x[t]]),
                want_state=(t == steps - 1))

    streamed = []
    print("StreamInfer legt-delay:")
    for response in stub.StreamInfer(requests(), timeout=args.timeout):
        kind = response.WhichOneof("kind")
        if kind == "opened":
            o = response.opened
            print("  opened session %s (d_input %d, d_output %d)"
                  % (o.session_id, o.d_input, o.d_output))
            continue
        values = list(response.output.values)
        streamed.extend(values)
        line = "  position %d: %s" % (
            response.position, ", ".join("%.6f" % v for v in values))
        if response.HasField("state"):
            line += "  (+ state: %d bytes at position %d)" % (
                len(response.state.data), response.state.position)
        print(line)

    # The stream's outputs are the unary call's first rows.
    want = y[:steps * d_out]
    worst = max(abs(a - b) for a, b in zip(streamed, want))
    scale = max(max(abs(b) for b in want), 1e-30)
    ok = len(streamed) == len(want) and worst <= 1e-5 * scale
    print("stream vs Infer: max difference %.3g -> %s"
          % (worst, "match" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
