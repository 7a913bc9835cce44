"""free_port: a free loopback port that no bind(0) elsewhere on the machine can be handed."""

from __future__ import annotations

import socket
from pathlib import Path

from localcluster.ports import free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1
    for port in ports:
        assert port < ephemeral
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
