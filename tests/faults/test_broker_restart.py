"""The broker restarted: in the middle of a re-warm fan-out, and empty under a running system."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from cluster import WARM_TIMEOUT, DrillCluster, drill_cluster
from drills import Drill
from test_worker_kills import RESTART_BOUND

from localcluster import Registry, push_image
from localcluster.harness import wait_for
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage, Trigger
from tasks.names import rewarm_events_subject
from tasks.rewarm import dispatch_rewarm
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings
from tasks.status import StatusStore
from worker.reconcile import RECONNECT_JITTER

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


def test_redis_restarted_empty_loses_nothing_the_system_needs(
    drill: Drill, workdir: Path, registry: Registry
) -> None:
    """Redis without persistence restarted empty: what it lost is re-derived, no image lost."""
    first, queued, later = (
        push_image(registry.host, f"re/{name}-{uuid.uuid4().hex[:6]}", "v1", size_mib=5)
        for name in ("first", "queued", "later")
    )
    with drill_cluster(workdir, [registry.host], broker="redis-ephemeral") as cluster:
        assert cluster.redis is not None
        reports = _rewarm_reports(cluster)
        cluster.deploy("first", first.ref)
        cluster.wait_warm(first.ref)

        # A pull queued for a worker that is down, lost with Redis; the worker never saw it.
        cluster.worker.stop()
        cluster.deploy("queued", queued.ref)
        wait_for(lambda: _pulls_queued(cluster) > 0, WARM_TIMEOUT, "the pull queued in Redis")
        was_queued = _pulls_queued(cluster)
        _restart_empty(cluster.redis)
        assert _pulls_queued(cluster) == 0, "Redis kept its queue: it persists"
        cluster.worker.start()
        restarted = time.time()
        warm_after_restart = cluster.wait_warm(queued.ref, timeout=RESTART_BOUND)
        back = cluster.first_pulled(queued.ref, after=restarted)
        assert back.trigger is Trigger.START, f"came back by {back.trigger}"

        # Redis restarted empty under a running worker: it reconnects and checks its slice.
        wait_for(lambda: _triggers(reports, Trigger.START), WARM_TIMEOUT, "the start reconcile")
        _restart_empty(cluster.redis)
        reconciled = wait_for(
            lambda: _triggers(reports, Trigger.RECONNECT), WARM_TIMEOUT, "a reconnect reconcile"
        )
        cluster.deploy("later", later.ref)
        warm_later = cluster.wait_warm(later.ref)
        held = [ref for ref in (first.ref, queued.ref, later.ref) if cluster.holds(ref)]
        node_slice, _ = CatalogStore(cluster.bus).get_slice(cluster.node)
        status = StatusStore(cluster.bus).get(cluster.node)
    refs = {first.ref, queued.ref, later.ref}
    assert len(held) == 3, f"the node lost images: holds only {held}"
    assert {item.image for item in node_slice.images} == refs
    # The record names only what is not warm: none of the three may be named.
    assert status.reported, "the node's status was lost"
    assert not refs & set(status.images), f"the node's status lost images: {status.images}"
    drill.record("pull tasks queued in Redis when it restarted / queued after", f"{was_queued} / 0")
    drill.record(
        "the lost pull's image present through CRI after its worker started",
        f"{warm_after_restart:.1f} s (came back by the reconcile at start)",
    )
    drill.record(
        "a running worker's reconcile after Redis came back empty",
        f"{reconciled:.1f} s (random delay of up to {RECONNECT_JITTER:.0f} s included)",
    )
    drill.record("a Deployment created after the restart, warm after", f"{warm_later:.1f} s")
    drill.record(
        "images the node holds / in its slice / warm in its status",
        f"{len(held)} / {len(node_slice.images)} / {len(refs - set(status.images))}",
    )


def _restart_empty(server: RedisServer) -> None:
    server.stop()
    server.start()


def _pulls_queued(cluster: DrillCluster) -> int:
    connection = redis.Redis.from_url(cluster.broker_url)
    try:
        return int(connection.llen(queue_for_node(cluster.node)))
    finally:
        connection.close()


def _rewarm_reports(cluster: DrillCluster) -> list[dict[str, Any]]:
    """The node's re-warm and reconcile reports, as they arrive on NATS."""
    received: list[dict[str, Any]] = []
    cluster.bus.subscribe(
        rewarm_events_subject(cluster.node), lambda _s, data: received.append(json.loads(data))
    )
    return received


def _triggers(reports: list[dict[str, Any]], trigger: Trigger) -> bool:
    return any(report["trigger"] == trigger for report in reports)
