"""free_port: a loopback port for a server of your own (LocalServer, the
tests, the bench scripts). Standard library only, so scripts that start
servers without talking gRPC themselves can load this file alone."""

import socket


def free_port():
    """A TCP port free on 127.0.0.1 now that a connection reaches (another
    process may take it before it is used; the server then fails to start
    and says so). Some sandboxes refuse connections to a few loopback ports
    whatever listens there, so a port is connected to before it is given."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    return port
    raise OSError("no loopback port a connection reaches")
