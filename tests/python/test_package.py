"""The package installs: `pip install --no-build-isolation` (Debian's
setuptools, no PyPI) of a copy of client/python and proto/ without any
generated stubs; the build backend generates them, and the installed
package, imported with the source tree out of reach, talks to a server."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import PACKAGE_DIR, ROOT, local_server


@pytest.mark.skipif(shutil.which("protoc") is None or shutil.which("grpc_python_plugin") is None,
                    reason="needs protoc and grpc_python_plugin")
def test_pip_install_ships_the_stubs(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE_DIR, src / "client" / "python",
                    ignore=shutil.ignore_patterns("_proto", "build", "*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "proto", src / "proto")
    target = tmp_path / "site"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                          "--no-deps", "--target", str(target), str(src / "client" / "python")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (target / "ssmserve" / "_proto" / "ssm" / "v1" / "ssm_service_pb2_grpc.py").is_file()

    with local_server() as server:
        probe = ("import ssmserve, numpy as np; "
                 "c = ssmserve.Client(%r); "
                 "print(ssmserve.__file__); "
                 "print(c.infer('legt-delay', np.ones((70, 1)))[-1, 0])" % server.address)
        run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60,
                             env=dict(env, PYTHONPATH=str(target)))
    assert run.returncode == 0, run.stdout + run.stderr
    where, value = run.stdout.split()
    assert where.startswith(str(target))
    assert abs(float(value) - 1.0) < 1e-3  # a delay line of a constant input
