"""Per-node status records: only what the slice expects now, written only when they change."""

from __future__ import annotations

import json
import random

from localcluster.harness import wait_for
from localcluster.services import NatsServer
from tasks.bus import BusUnavailable, NatsBus
from tasks.models import Outcome, PullResult
from tasks.names import STATUS_BUCKET
from tasks.status import NodeStatus, StatusStore

IMAGES = 2000
GENERATIONS = 100
REPLACED = IMAGES // 10


def record_size(bus: NatsBus, node: str) -> int:
    found = bus.kv_get(STATUS_BUCKET, node)
    assert found is not None, f"no status record for {node}"
    return len(found[0])


def test_a_record_stays_flat_across_catalog_generations_that_replace_a_tenth(
    private_bus: NatsBus,
) -> None:
    store, rng = StatusStore(private_bus), random.Random(7)
    slice_ = [f"registry.example.com/ci/app-{n}:build-0" for n in range(IMAGES)]
    sizes = []
    for generation in range(1, GENERATIONS + 1):
        for index in rng.sample(range(IMAGES), REPLACED):  # CI pushes new tags
            slice_[index] = f"registry.example.com/ci/app-{index}:build-{generation}"
        broken = rng.sample(slice_, 3)  # a few fail on each node, for a reason
        store.record_rewarm("n1", slice_, generation, [i for i in slice_ if i not in broken])
        reason = "manifest unknown: the tag was deleted before the node pulled it"
        store.record_many("n1", [PullResult("n1", i, Outcome.FAILED, reason) for i in broken])
        sizes.append(record_size(private_bus, "n1"))

    assert max(sizes) <= sizes[0] * 1.2, f"status grew: {sizes[0]} -> {max(sizes)} bytes"
    status = StatusStore(private_bus).get("n1")
    assert (status.expected_count, status.warm_count) == (IMAGES, IMAGES - 3)
    assert len(status.images) == 3 and status.last_rewarm_revision == GENERATIONS


def test_a_rewarm_that_finds_everything_as_recorded_writes_nothing(private_bus: NatsBus) -> None:
    store = StatusStore(private_bus)
    slice_ = ["docker.io/library/a:1", "docker.io/library/b:1", "docker.io/library/gone:1"]
    store.record_rewarm("n1", slice_, 5, slice_[:1])
    store.record_many("n1", [PullResult("n1", slice_[1], Outcome.PULLED)])
    store.record_many("n1", [PullResult("n1", slice_[2], Outcome.FAILED, "not found")])
    written = private_bus.kv_revision(STATUS_BUCKET)

    store.record_rewarm("n1", slice_, 5, slice_[:2])  # the same answer to the same slice
    store.record_many("n1", [PullResult("n1", slice_[2], Outcome.FAILED, "not found")])
    store.record_many("n1", [PullResult("n1", slice_[0], Outcome.PRESENT)])
    assert private_bus.kv_revision(STATUS_BUCKET) == written

    store.record_rewarm("n1", slice_[:2], 6, slice_[:2])  # the broken image left the slice
    status = StatusStore(private_bus).get("n1")
    assert private_bus.kv_revision(STATUS_BUCKET) == written + 1
    assert status.images == {} and (status.expected_count, status.warm_count) == (2, 2)
    status.expected = slice_[:2]
    assert status.summary()["warm_images"] == slice_[:2]


def test_a_failed_pull_of_an_image_new_to_the_slice_is_recorded_until_it_leaves(
    private_bus: NatsBus,
) -> None:
    store = StatusStore(private_bus)
    old, new = "docker.io/library/old:1", "docker.io/library/new:1"
    store.record_rewarm("n1", [old], 1, [old])

    store.record_many("n1", [PullResult("n1", new, Outcome.FAILED, "manifest unknown")])
    status = StatusStore(private_bus).get("n1")
    status.expected = [old, new]  # the slice now, as warm-status reads it
    assert status.summary()["failed"] == {new: "manifest unknown"}
    assert status.summary()["warm_images"] == [old]
    assert (status.images[new].attempt, status.images[new].trigger) == (1, "task")

    store.record_rewarm("n1", [old], 2, [old])  # the workload went away again
    assert StatusStore(private_bus).get("n1").images == {}


def test_a_record_written_by_an_older_worker_still_reads() -> None:
    old = {
        "node": "n1",
        "expected": ["docker.io/library/a:1", "docker.io/library/b:1"],
        "images": {
            "docker.io/library/a:1": {"outcome": "present", "reason": "", "at": 1.0, "seconds": 0},
            "docker.io/library/b:1": {
                "outcome": "failed",
                "reason": "gone",
                "at": 2.0,
                "seconds": 0,
            },
        },
        "last_rewarm_at": 3.0,
        "last_rewarm_revision": 4,
    }
    status = NodeStatus.from_json(json.dumps(old).encode())
    status.expected = old["expected"]  # type: ignore[assignment]

    assert status.summary()["warm_images"] == ["docker.io/library/a:1"]
    assert status.summary()["failed"] == {"docker.io/library/b:1": "gone"}


def test_a_record_nats_lost_is_written_again_at_the_next_rewarm(
    private_nats: NatsServer, private_bus: NatsBus
) -> None:
    store, slice_ = StatusStore(private_bus), ["registry.example.com/app:1"]
    store.record_rewarm("n1", slice_, 1, slice_)
    private_nats.restart_empty()  # the chart's NATS keeps no storage by default

    def record_lost() -> bool:
        try:
            return private_bus.kv_get(STATUS_BUCKET, "n1") is None
        except BusUnavailable:
            return False

    wait_for(record_lost, 20, "the bus to reconnect to the emptied NATS")

    store.record_rewarm("n1", slice_, 1, slice_)  # nothing changed on the node

    assert record_size(private_bus, "n1") > 0


def test_a_record_that_nats_lost_is_written_again_by_the_next_rewarm(
    private_bus: NatsBus,
) -> None:
    store, slice_ = StatusStore(private_bus), ["docker.io/library/a:1"]
    store.record_rewarm("n1", slice_, 1, slice_)
    private_bus.kv_delete(STATUS_BUCKET, "n1")  # NATS restarted without its storage

    store.record_rewarm("n1", slice_, 1, slice_)

    assert StatusStore(private_bus).get("n1").warm_count == 1


def test_a_pointer_rewritten_over_the_same_slice_is_no_news(private_bus: NatsBus) -> None:
    store, slice_ = StatusStore(private_bus), ["docker.io/library/a:1"]
    store.record_rewarm("n1", slice_, 5, slice_, "hash-a")
    written = private_bus.kv_revision(STATUS_BUCKET)

    store.record_rewarm("n1", slice_, 9, slice_, "hash-a")  # the watcher's hourly resync
    assert private_bus.kv_revision(STATUS_BUCKET) == written
    store.record_rewarm("n1", slice_, 12, slice_, "hash-b")  # new content, same images
    assert StatusStore(private_bus).get("n1").last_rewarm_revision == 12
