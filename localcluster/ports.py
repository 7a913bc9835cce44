"""Free TCP ports on the loopback interface.

Every service of the local cluster listens on 127.0.0.1 on a port picked here, so that several
test runs, benchmarks and a developer's demo can share one machine without clashing.

The ports come from below the kernel's ephemeral range: a port the kernel handed out for
``bind(0)`` goes back to that pool when released, and the next process to bind port 0 (any
NATS, Redis or client on the machine) may get it before the caller's server binds it, which
happens seconds later for a process that first imports its libraries. Below the range, only
another caller of free_port could take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before it is returned, so another process could take it in between;
    callers that start a server on it should treat "address already in use" as a reason to
    pick another port and retry.
    """
    top = _ephemeral_start()
    if top > _LOWEST:
        for _ in range(100):
            candidate = random.randrange(_LOWEST, top)
            if _bindable(candidate):
                return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
