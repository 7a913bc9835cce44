"""Each CLI test gets a private NATS (an empty catalog) and the session's Redis as broker."""

from __future__ import annotations

import uuid

import pytest
from cli_testing import BAD, GOOD

from localcluster import product
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import CatalogEntry, NodeSlice, SliceImage


@pytest.fixture
def bus(private_bus: NatsBus) -> NatsBus:
    """This module's tests each get an empty catalog: the private NATS, not the session's."""
    return private_bus


@pytest.fixture
def env(redis_server: RedisServer, private_nats: NatsServer) -> dict[str, str]:
    return product.product_env(broker_url=f"{redis_server.url}/7", nats_url=private_nats.url)


@pytest.fixture
def nodes(bus: NatsBus) -> list[str]:
    run = uuid.uuid4().hex[:4]
    names = [f"cli-{run}-0", f"ip-10-0-1-12.cli-{run}.internal"]  # dotted, as on EC2
    catalog = CatalogStore(bus)
    for name in names:
        catalog.put_slice(NodeSlice(name, (SliceImage(GOOD), SliceImage(BAD))))
    catalog.put_entry(CatalogEntry(GOOD, ("Deployment:default/web",), (), 2, workload_count=3))
    catalog.put_entry(CatalogEntry(BAD, ("Deployment:default/typo",), (), 2))
    return names
