"""What the bench scripts share: a loopback port a connection reaches (the
Python package's own free_port, loaded alone so the scripts that only
start processes need no gRPC), the load average, and waiting for a server
to answer `ssm_client health`."""

import importlib.util
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_spec = importlib.util.spec_from_file_location(
    "ssmserve_ports", os.path.join(ROOT, "client", "python", "ssmserve", "ports.py"))
_ports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ports)
free_port = _ports.free_port


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_healthy(who, client, address, proc, tries=300, deadline="2s"):
    """Returns once `proc`'s server answers health at `address`; exits the
    script, naming `who`, if it exits or does not answer within `tries`
    probes 0.2 s apart."""
    for _ in range(tries):
        if proc.poll() is not None:
            sys.exit("%s: a server exited (%d)" % (who, proc.returncode))
        if subprocess.run([client, "--address=" + address, "--deadline=" + deadline, "health"],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit("%s: a server did not become healthy" % who)
