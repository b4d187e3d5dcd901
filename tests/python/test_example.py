"""client/python/ssm_example.py against the real server: it runs, prints
what it promises and exits 0."""

import socket
import subprocess
import sys

from conftest import PACKAGE_DIR


def test_example_runs(server):
    run = subprocess.run([sys.executable, str(PACKAGE_DIR / "ssm_example.py"),
                          f"--address={server.address}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "legt-delay" in run.stdout and "s4-demo" in run.stdout
    assert "stream vs Infer: max difference" in run.stdout and "-> match" in run.stdout


def test_example_reports_an_unreachable_server():
    with socket.socket() as held:  # bound, not listening: refused
        held.bind(("127.0.0.1", 0))
        run = subprocess.run([sys.executable, str(PACKAGE_DIR / "ssm_example.py"),
                              f"--address=127.0.0.1:{held.getsockname()[1]}", "--timeout=1"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "UNAVAILABLE" in run.stderr
