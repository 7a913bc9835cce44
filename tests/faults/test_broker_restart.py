"""The broker restarted in the middle of a re-warm fan-out."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import redis
from celery import Celery
from drills import Drill

from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage
from tasks.rewarm import dispatch_rewarm
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings

NODES = 200
WINDOW = 4.0  # seconds the fan-out is paced over
OUTAGE = 1.5  # seconds Redis is down, in the middle of it


def test_broker_restart_during_fanout_loses_no_node(drill: Drill, workdir: Path) -> None:
    """Redis restarted during a paced re-warm fan-out: no node's re-warm is lost."""
    base = workdir / f"b{uuid.uuid4().hex[:6]}"
    nodes = [f"fan-{i}" for i in range(NODES)]
    with NatsServer(base / "nats") as nats, RedisServer(base / "redis", durable=True) as broker:
        bus = NatsBus(NatsSettings(url=nats.url))
        for node in nodes:
            CatalogStore(bus).put_slice(NodeSlice(node, (SliceImage("docker.io/library/a:1"),)))
        app = Celery("drill", broker=f"{broker.url}/0")
        app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        outage = threading.Thread(target=_restart, args=(broker,))
        started = time.monotonic()
        outage.start()
        sent = dispatch_rewarm(app, bus, window=WINDOW)
        seconds = time.monotonic() - started
        outage.join()
        queued = _queued(broker, nodes)
        bus.close()
        app.close()
    lost = [node for node in nodes if queued[node] == 0]
    assert not lost, f"{len(lost)} nodes lost their re-warm: {lost[:10]}"
    drill.record("nodes in the fan-out", NODES)
    drill.record("fan-out window / Redis outage in it", f"{WINDOW:.0f} s / {OUTAGE:.1f} s")
    drill.record(
        "re-warms sent / nodes with one queued after the restart",
        f"{len(sent)} / {NODES - len(lost)}",
    )
    drill.record("duplicates (a send retried across the restart)", sum(queued.values()) - NODES)
    drill.record("fan-out took", f"{seconds:.1f} s")


def _restart(broker: RedisServer) -> None:
    time.sleep(WINDOW / 3)
    broker.stop()
    time.sleep(OUTAGE)
    broker.start()


def _queued(broker: RedisServer, nodes: list[str]) -> dict[str, int]:
    connection = redis.Redis.from_url(f"{broker.url}/0")
    try:
        return {node: int(connection.llen(queue_for_node(node))) for node in nodes}
    finally:
        connection.close()
