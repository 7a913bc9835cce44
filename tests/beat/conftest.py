"""Private Redis and NATS for the beat tests, and a catalog seeded with simulated nodes.

Private, because these tests fill the catalog with nodes that have no worker: a shared catalog
would make other modules' "re-warm every node" wait for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localcluster.services import RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage


@pytest.fixture(scope="module")
def private_redis(workdir: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir / f"redis-{uuid.uuid4().hex[:6]}") as server:
        yield server


SeedNodes = Callable[[int, int], list[str]]


@pytest.fixture
def seed_nodes(private_bus: NatsBus) -> SeedNodes:
    """Write ``count`` node slices of ``images`` images each; returns the node names."""

    def seed(count: int, images: int) -> list[str]:
        run = uuid.uuid4().hex[:6]
        catalog = CatalogStore(private_bus)
        refs = tuple(SliceImage(f"registry.example/app-{i}:v1") for i in range(images))
        names = [f"sim-{run}-{n}" for n in range(count)]
        for name in names:
            catalog.put_slice(NodeSlice(name, refs))
        return names

    return seed
