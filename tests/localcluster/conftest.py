"""Fixtures for the local cluster's own tests: real registries, containerds and API doubles.

Every fixture stops what it started in its teardown, so a failing test leaves no daemon behind.
Work directories are short paths under /tmp because containerd's sockets live in them and unix
socket paths are limited to about 107 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import Containerd, FakeKubeAPI, Registry, ensure_system_packages
from localcluster.scratch import scratch_dir


@pytest.fixture(scope="session")
def system_packages() -> None:
    """containerd, runc, docker-registry, skopeo, htpasswd: installed on a fresh machine."""
    ensure_system_packages()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with scratch_dir("lc-") as path:
        yield path


@pytest.fixture
def registry(system_packages: None, short_dir: Path) -> Iterator[Registry]:
    with Registry(short_dir / "registry") as reg:
        yield reg


@pytest.fixture
def private_registry(system_packages: None, short_dir: Path) -> Iterator[Registry]:
    with Registry(short_dir / "private", htpasswd={"alice": "wonderland"}) as reg:
        yield reg


@pytest.fixture
def two_nodes(
    system_packages: None, short_dir: Path, registry: Registry
) -> Iterator[tuple[Containerd, Containerd]]:
    """Two containerds side by side, both allowed to pull from `registry` over plain http."""
    node_a = Containerd(short_dir, "a", insecure_registries=[registry.host])
    node_b = Containerd(short_dir, "b", insecure_registries=[registry.host])
    try:
        node_a.start()
        node_b.start()
        yield node_a, node_b
    finally:
        node_b.stop()
        node_a.stop()


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.2) as api:
        yield api
