"""Free TCP ports on the loopback interface.

Every service of the local cluster listens on 127.0.0.1 on a port the kernel picked, so that
several test runs, benchmarks and a developer's demo can share one machine without clashing.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before it is returned, so another process could take it in between;
    callers that start a server on it should treat "address already in use" as a reason to
    pick another port and retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
