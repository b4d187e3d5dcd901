"""The generated gRPC stubs (ssmserve/_proto, made from proto/ by
generate_stubs.py; an installed package carries them)."""

try:
    from ._proto.ssm.v1 import model_config_pb2 as config_pb  # noqa: F401
    from ._proto.ssm.v1 import ssm_service_pb2 as pb  # noqa: F401
    from ._proto.ssm.v1 import ssm_service_pb2_grpc as rpc  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ssmserve: the generated gRPC stubs (ssmserve/_proto) are missing or broken "
        f"({e}). In a source tree, generate them with "
        "`/usr/bin/python3 client/python/generate_stubs.py` (needs protoc and "
        "grpc_python_plugin: apt install protobuf-compiler protobuf-compiler-grpc) or "
        "build the project (target ssm_python_stubs); `pip install` generates them "
        "itself.") from e
