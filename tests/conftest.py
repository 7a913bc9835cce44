"""Session-wide real services for the tests: a private Redis, NATS with JetStream, a registry.

Each test run starts its own servers on free loopback ports (see localcluster.services), so the
tests never touch the machine's shared Redis and NATS, and fault tests can stop them at will.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import Registry, ensure_system_packages
from localcluster.demo import KUBECTL
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, OperatorNats, RedisServer
from tasks.bus import NatsBus
from tasks.settings import NatsSettings

# `-m "not slow"` is the inner loop: everything but real containerd, dockerd, registries,
# brokers and package installs (NATS starts in milliseconds, so it stays in). CI runs all.
SLOW_FOLDERS = ("e2e", "faults")
SLOW_FIXTURES = frozenset(
    {
        "node",  # containerd
        "two_nodes",
        "dockerd",
        "registry",
        "private_registry",
        "system_packages",
        "redis_server",  # brokers
        "private_redis",
        "broker",
        "broker_cluster",
        "sim_cluster",
        "manifest_files",  # kubernetes-validate against every Kubernetes version's schemas
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
        if folder in SLOW_FOLDERS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
def operator_nats(workdir: Path) -> Iterator[OperatorNats]:
    """NATS in operator mode: every client needs a user JWT signed with its account key."""
    with OperatorNats(workdir / "nats-operator", secrets.token_urlsafe(32)) as server:
        yield server


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
