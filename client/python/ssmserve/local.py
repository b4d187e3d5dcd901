"""LocalServer: an ssm_server process of your own on a free loopback port
(or a Unix-domain socket: `unix_socket=` a path), for notebooks, scripts
and tests.

    with ssmserve.LocalServer("build/server/ssm_server", model_repository="models") as server:
        client = ssmserve.Client(server.address)
        ...

It is started on 127.0.0.1, waited for until it answers ListModels (a
server serving TLS needs `client_options`, the probe Client's ca/cert/...;
one that wants a token counts as up once it asks for it), and stopped by
its PID (SIGTERM, then SIGKILL after `stop_timeout`). Where
util-linux's setpriv exists the server is also told to die with the thread
that started it (PR_SET_PDEATHSIG), so a killed Python leaves no server
behind.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from . import errors
from .client import Client
from .ports import free_port  # LocalServer's picks (tests replace it here)


class LocalServer:
    def __init__(self, binary="ssm_server", *, model_repository=None, flags=(), port=0,
                 unix_socket=None, ready_timeout=30.0, stop_timeout=15.0, client_options=None):
        self.binary = shutil.which(binary) or binary
        self.model_repository = model_repository
        self.flags = list(flags)
        # Client keyword arguments for the readiness probe (e.g. ca=,
        # server_name= for a server with --tls_cert).
        self.client_options = dict(client_options or {})
        # A Unix-domain socket's path (the server replaces a stale file);
        # then there is no port.
        self.unix_socket = os.fspath(unix_socket) if unix_socket is not None else None
        # A port of its own choice may be retaken.
        self._pick_port = not port and self.unix_socket is None
        self.port = 0 if self.unix_socket is not None else (port or free_port())
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process = None
        self._log = None

    @property
    def address(self):
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def start(self, wait=True):
        """Starts the process and (with wait) waits until it serves;
        Unavailable if it exits first or is not serving in ready_timeout."""
        self._attempts = 3 if self._pick_port else 1
        return self._spawn(wait)

    def _spawn(self, wait):
        args = [self.binary, f"--address={self.address}", "--metrics_port=0"]
        if self.model_repository is not None:
            args.append(f"--model_repository={self.model_repository}")
        args += self.flags
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "KILL", "--"] + args
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self._started = time.monotonic()
        return self.wait_serving() if wait else self

    def wait_serving(self):
        """Waits until the started server answers ListModels."""
        deadline = self._started + self.ready_timeout
        # wait_for_ready with quick reconnects: a fail-fast probe of a channel
        # in TRANSIENT_FAILURE would wait for gRPC's resolver (seconds).
        probe_options = {"token": "", **self.client_options}
        with Client(self.address, timeout=0.5, wait_for_ready=True, reconnect_backoff=0.05,
                    max_reconnect_backoff=0.2, **probe_options) as probe:
            while True:
                if self.process.poll() is not None:
                    self._attempts -= 1
                    if self._attempts > 0 and "cannot listen" in self.log():
                        # The free port was taken (e.g. as another socket's
                        # ephemeral port) before the server bound it.
                        self.port = free_port()
                        self._spawn(wait=False)
                        return self.wait_serving()
                    raise errors.Unavailable(
                        f"ssm_server exited with {self.process.returncode} before serving; "
                        f"log:\n{self.log()}")
                try:
                    probe.models()
                    return self
                except (errors.Unavailable, errors.DeadlineExceeded):
                    pass
                except errors.SsmError:
                    return self  # it answers (e.g. it wants a token): it is up
                if time.monotonic() > deadline:
                    self.kill()
                    raise errors.Unavailable(
                        f"ssm_server did not serve at {self.address} within "
                        f"{self.ready_timeout} s; log:\n{self.log()}")
                time.sleep(0.05)

    def running(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.process.pid, sig)

    def kill(self):
        """SIGKILL, and wait for it."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def stop(self):
        """SIGTERM (the server drains), SIGKILL after stop_timeout; the exit
        status (None if it was never started)."""
        if self.process is None:
            return None
        if self.running():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self):
        """What the server printed so far."""
        if self._log is None:
            return ""
        # pread: the server shares the file offset, which must not move.
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def __enter__(self):
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
