"""Session-wide real services for the tests: a private Redis, NATS with JetStream, a registry.

Each test run starts its own servers on free loopback ports (see localcluster.services), so the
tests never touch the machine's shared Redis and NATS, and fault tests can stop them at will.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import Registry, ensure_system_packages
from localcluster.demo import KUBECTL
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.settings import NatsSettings


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with scratch_dir("wi-") as path:
        yield path


@pytest.fixture(scope="session")
def system_packages() -> None:
    ensure_system_packages()


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """The pinned official kubectl that scripts/bootstrap installs (fetched if missing)."""
    if not KUBECTL.exists():
        script = KUBECTL.parents[2] / "scripts" / "get_helm.py"
        subprocess.run([sys.executable, str(script), str(KUBECTL.parent)], check=True, timeout=300)
    return KUBECTL


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    server = NatsServer(workdir / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(workdir: Path, system_packages: None) -> Iterator[Registry]:
    with Registry(workdir / "registry") as running:
        yield running


@pytest.fixture
def bus(nats_server: NatsServer) -> Iterator[NatsBus]:
    with NatsBus(NatsSettings(url=nats_server.url)) as connected:
        yield connected


@pytest.fixture  # per test: each starts with empty buckets (catalog, status, leases)
def private_nats(workdir: Path) -> Iterator[NatsServer]:
    with NatsServer(workdir / f"nats-{uuid.uuid4().hex[:6]}") as server:
        yield server


@pytest.fixture
def private_bus(private_nats: NatsServer) -> Iterator[NatsBus]:
    with NatsBus(NatsSettings(url=private_nats.url)) as connected:
        yield connected
