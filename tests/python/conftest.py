"""Shared fixtures of the Python client's tests (tests/python).

They run the real ssm_server (SSM_SERVER_BIN, default build/server/ssm_server)
on free loopback ports and stop it by PID; the package runs from the tree
(client/python, with the stubs the build generated). ctest runs each file
as its own entry (tests/python/CMakeLists.txt):

    SSM_SERVER_BIN=build/server/ssm_server /usr/bin/python3 -m pytest tests/python
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "client" / "python"
sys.path.insert(0, str(PACKAGE_DIR))

import ssmserve  # noqa: E402

MODELS = ROOT / "models"


def build_dir():
    return Path(os.environ.get("SSM_BUILD_DIR", ROOT / "build"))


def server_bin():
    return os.environ.get("SSM_SERVER_BIN", str(build_dir() / "server" / "ssm_server"))


def client_bin():
    return os.environ.get("SSM_CLIENT_BIN", str(build_dir() / "client" / "ssm_client"))


def local_server(flags=(), port=0, **kwargs):
    return ssmserve.LocalServer(server_bin(), model_repository=str(MODELS), flags=flags,
                                port=port, **kwargs)


class ServerGroup:
    """Servers started together (all spawned first, so they load their
    models at once, then each waited for) and stopped together."""

    def __init__(self, servers):
        self.servers = servers

    def __enter__(self):
        for s in self.servers:
            s.start(wait=False)
        for s in self.servers:
            s.wait_serving()
        return self

    def __exit__(self, *exc):
        for s in self.servers:
            s.stop()


@pytest.fixture(scope="session")
def server():
    with local_server() as s:
        yield s


@pytest.fixture
def client(server):
    with ssmserve.Client(server.address, timeout=20.0, token="") as c:
        yield c


def sequence(length, d=1, batch=None, seed=1):
    """Two sines and a little noise, float32 [L, d] (or [batch, L, d])."""
    rng = np.random.default_rng(seed)
    shape = (length, d) if batch is None else (batch, length, d)
    t = np.arange(length, dtype=np.float64)[:, None]
    base = 0.8 * np.sin(2 * np.pi * t / 97) + 0.5 * np.sin(2 * np.pi * t / 23 + 1)
    return (np.broadcast_to(base, shape) + 0.1 * rng.standard_normal(shape)).astype(np.float32)


# Float32 on the wire: the same computation by different paths (convolution
# vs recurrence, chunkings) agrees to this, relative to the largest output.
WIRE_TOLERANCE = 1e-5


def max_relative_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


class RedisServer:
    """A real redis-server (Debian's) on 127.0.0.1 at a free port, nothing
    persisted, stopped by its PID; it dies with the test process where
    setpriv exists. For the durable-session tests (--session_store)."""

    BINARY = "/usr/bin/redis-server"

    def __init__(self):
        self.port = ssmserve.free_port()
        self.process = None
        self._log = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        args = [self.BINARY, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", tempfile.gettempdir()]
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "KILL", "--"] + args
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        self._log.seek(0)
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}:\n"
                           f"{self._log.read().decode(errors='replace')}")

    def command(self, *words):
        """One command, its reply's first line (enough for PING and
        integer replies)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as s:
            s.sendall(b"*%d\r\n" % len(words) + b"".join(
                b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words))
            reply = b""
            while not reply.endswith(b"\r\n"):
                part = s.recv(4096)
                if not part:
                    break
                reply += part
        return reply.split(b"\r\n", 1)[0]

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()
