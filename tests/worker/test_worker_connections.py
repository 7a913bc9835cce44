"""How many broker connections a node worker holds: what decides whether Redis can serve
thousands of nodes (its default maxclients is 10,000)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from localcluster import Containerd
from localcluster.harness import start_worker
from localcluster.services import NatsServer, RedisServer

SETTLE = 3.0  # seconds for connections opened lazily after "ready" to show up


@pytest.mark.parametrize(("remote_control", "most"), [("false", 2), ("true", 6)])
def test_broker_connections_per_worker(
    node: Containerd,
    nats_server: NatsServer,
    workdir: Path,
    remote_control: str,
    most: int,
) -> None:
    with RedisServer(workdir / f"conn-{remote_control}") as broker:
        client = redis.Redis.from_url(f"{broker.url}/0")
        worker = start_worker(
            node.endpoint,
            broker,
            nats_server,
            workdir / "logs",
            WARM_WORKER_REMOTE_CONTROL=remote_control,
        )
        try:
            time.sleep(SETTLE)
            others = [c for c in client.client_list() if int(c["id"]) != client.client_id()]
        finally:
            worker.stop()
            client.close()
    assert 1 <= len(others) <= most, [c.get("cmd") for c in others]
