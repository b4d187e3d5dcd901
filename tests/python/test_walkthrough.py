"""README.md's "From a PyTorch checkpoint to Python calls", run as written:
every ```sh block between the walkthrough marks, in order, in one bash
from the repository's root. Only three strings are swapped, so the test
needs no fixed folder, port or build folder: /tmp/ssm-walkthrough (a
temporary folder), 127.0.0.1:50051 (a free port) and
build/server/ssm_server (the binary under test). The server the README
starts is stopped by its PID ($server) even when a step fails."""

import os
import re
import signal
import subprocess

import pytest

from conftest import ROOT, server_bin

pytest.importorskip("torch", reason="needs python3-torch (scripts/install-deps.sh --test)")

BEGIN = "<!-- walkthrough:"
END = "<!-- /walkthrough -->"


def walkthrough_blocks():
    text = (ROOT / "README.md").read_text()
    start, stop = text.index(BEGIN), text.index(END)
    blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:stop], flags=re.S | re.M)
    assert len(blocks) >= 5, "the walk-through lost its steps"
    return blocks


def run_walkthrough(work):
    """Runs the blocks with `work` as the folder and a free port; the
    process's exit status and output."""
    from ssmserve import free_port
    script = "\n".join(walkthrough_blocks())
    for needle in ("/tmp/ssm-walkthrough", "127.0.0.1:50051", "build/server/ssm_server"):
        assert needle in script, needle
    script = (script.replace("/tmp/ssm-walkthrough", str(work))
              .replace("127.0.0.1:50051", f"127.0.0.1:{free_port()}")
              .replace("build/server/ssm_server", server_bin()))
    guarded = ("set -euo pipefail\n"
               "trap 'if [ -n \"${server:-}\" ]; then kill \"$server\" 2>/dev/null || true; fi' EXIT\n"
               + script)
    proc = subprocess.Popen(["bash", "-c", guarded], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        out, _ = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the bash we started and what it started
        out, _ = proc.communicate()
        pytest.fail("the walk-through did not finish in 100 s:\n" + out)
    return proc.returncode, out


def test_readme_walkthrough(tmp_path):
    for attempt in range(2):
        work = tmp_path / f"work{attempt}"
        code, out = run_walkthrough(work)
        log = work / "server.log"
        log = log.read_text() if log.exists() else ""
        # Once more on another port if the free one was taken meanwhile.
        if code == 0 or "cannot listen" not in log:
            break
    assert code == 0, out + log
    assert "PyTorch: (1, 1000, 2) -> (1, 1000, 3)" in out
    assert "convert_s4_checkpoint: wrote" in out
    diffs = [float(d) for d in re.findall(r"max relative difference to PyTorch (\S+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-4, out
    assert "the served model matches PyTorch" in out
