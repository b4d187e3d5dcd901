"""Builds ssmserve with its gRPC stubs: generated from ../../proto into
ssmserve/_proto (generate_stubs.py) whenever this file runs, before
setuptools looks for the packages, so an installed package needs no build
folder. Without protoc and the plugin, or without the proto/ folder (a copy
of client/python alone), the stubs already in ssmserve/_proto are used,
and a package without any is refused."""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def stubs():
    spec = importlib.util.spec_from_file_location("generate_stubs", HERE / "generate_stubs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = HERE / "ssmserve" / "_proto"
    protos = gen.default_proto_dir()
    protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc and plugin and all((protos / p).is_file() for p in gen.PROTOS):
        gen.generate(protos, out, protoc, plugin)
    elif not (out / "ssm" / "v1" / "ssm_service_pb2_grpc.py").is_file():
        raise SystemExit(
            "ssmserve: cannot generate the gRPC stubs (needs protoc and grpc_python_plugin: "
            "apt install protobuf-compiler protobuf-compiler-grpc; and the repository's "
            f"proto/ at {protos}), and ssmserve/_proto holds none")


stubs()
setup()
