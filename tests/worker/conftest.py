"""Fixtures for the node worker's tests: a real containerd node, a real registry, NATS events."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_testing import CountingRuntime, worker_settings

from localcluster import Containerd, PushedImage, Registry, push_image
from localcluster.harness import Events
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.names import pull_events_subject
from worker.agent import NodeAgent
from worker.runtime.cri import CriRuntime


@pytest.fixture(scope="module")
def node(workdir: Path, registry: Registry) -> Iterator[Containerd]:
    """A real containerd for this module's simulated node."""
    containerd = Containerd(
        workdir / f"w{uuid.uuid4().hex[:4]}", "node", insecure_registries=[registry.host]
    )
    with containerd:
        yield containerd


@pytest.fixture
def node_name() -> str:
    return f"node-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_agent(
    node: Containerd, nats_server: NatsServer, bus: NatsBus, node_name: str
) -> Iterator[Callable[..., tuple[NodeAgent, CountingRuntime]]]:
    """Build a NodeAgent for ``node_name`` over the real containerd, with runtime overrides."""
    runtimes: list[CountingRuntime] = []

    def make(**runtime: Any) -> tuple[NodeAgent, CountingRuntime]:
        counting = CountingRuntime(CriRuntime(node.endpoint))
        runtimes.append(counting)
        settings = worker_settings(nats_server.url, node.endpoint, **runtime)
        return NodeAgent(settings, node_name, counting, bus), counting

    yield make
    for counting in runtimes:
        counting.close()


@pytest.fixture
def events(bus: NatsBus, node_name: str) -> Events:
    return Events.follow(bus, pull_events_subject(node_name))


@pytest.fixture
def fresh_image(registry: Registry, workdir: Path) -> Callable[..., PushedImage]:
    """Push an image of its own content (so no runtime has it) to the session's registry."""

    def push(
        size_mib: float = 1.0, *, tag: str = "v1", repository: str | None = None
    ) -> PushedImage:
        repository = repository or f"wt/img-{uuid.uuid4().hex[:8]}"
        return push_image(registry.host, repository, tag, size_mib=size_mib)

    return push
