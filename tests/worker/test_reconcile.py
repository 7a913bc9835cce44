"""A worker that starts, or whose broker comes back, warms its node's slice without any task.

The real process on Redis with the product's defaults: no pull task is sent, only the node's
catalog slice is written, so whatever arrives on the node came from the worker's reconcile; the
``trigger`` in its report says which one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from localcluster import Containerd, Registry, push_image
from localcluster.harness import WARM_TIMEOUT, Events, start_worker
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, Outcome, SliceImage, Trigger
from tasks.names import pull_events_subject


def test_a_starting_worker_pulls_its_slice_and_a_reconnected_one_checks_it_again(
    node: Containerd, registry: Registry, nats_server: NatsServer, workdir: Path, bus: NatsBus
) -> None:
    name = f"rec-{uuid.uuid4().hex[:6]}"
    first, second = (
        push_image(registry.host, f"wt/rec-{uuid.uuid4().hex[:6]}", "v1", size_mib=2)
        for _ in range(2)
    )
    catalog = CatalogStore(bus)
    catalog.put_slice(NodeSlice(name, (SliceImage(first.ref),)))
    events = Events.follow(bus, pull_events_subject(name))
    with RedisServer(workdir / f"rec-{name}") as broker:
        worker = start_worker(node.endpoint, broker, nats_server, workdir / "logs", node=name)
        try:
            events.wait_for(lambda: bool(events.of(first.ref)), WARM_TIMEOUT, "the reconcile")
            catalog.put_slice(NodeSlice(name, (SliceImage(first.ref), SliceImage(second.ref))))
            broker.stop()  # no re-warm is sent: only the reconnection may notice the new image
            broker.start()
            events.wait_for(lambda: bool(events.of(second.ref)), WARM_TIMEOUT, "the reconnect")
        finally:
            worker.stop()
    (started,) = events.of(first.ref)
    (reconnected,) = events.of(second.ref)
    assert (started.outcome, started.trigger) == (Outcome.PULLED, Trigger.START)
    assert (reconnected.outcome, reconnected.trigger) == (Outcome.PULLED, Trigger.RECONNECT)
    assert {first.ref, second.ref} <= node.image_refs()
