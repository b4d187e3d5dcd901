#!/usr/bin/python3
"""ctest wrapper: starts ssm_server on a free loopback port, runs
client/python/ssm_example.py against it, stops the server by PID.

usage: run_python_example.py SERVER_BIN MODELS_DIR EXAMPLE STUBS_DIR
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    server_bin, models, example, stubs = sys.argv[1:5]
    port = free_port()
    address = "127.0.0.1:%d" % port
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [server_bin, "--address=" + address, "--model_repository=" + models,
         "--metrics_port=0"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        # The example waits for the channel itself; give the server time to
        # load its models first.
        deadline = time.time() + 30
        while time.time() < deadline:
            if server.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        result = subprocess.run(
            [sys.executable, example, "--address=" + address, "--stubs=" + stubs],
            timeout=90)
        code = result.returncode
    except subprocess.TimeoutExpired:
        print("ssm_example.py timed out")
        code = 1
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
    if code != 0:
        log.seek(0)
        sys.stdout.write("--- ssm_server log ---\n")
        sys.stdout.write(log.read().decode(errors="replace"))
    return code


if __name__ == "__main__":
    sys.exit(main())
