"""NATS restarted without its storage, as the chart runs it by default (no persistent volume)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from cluster import drill_cluster
from drills import Drill

from localcluster import Registry, push_image
from localcluster.harness import wait_for
from tasks.bus import BusUnavailable
from tasks.catalog import CatalogStore, UnknownNode
from tasks.names import CATALOG_BUCKET
from tasks.status import StatusStore

REWRITTEN_WITHIN = 10.0  # seconds from NATS back to the node's slice back (issue 10, part 4)


def test_nats_restarted_empty_the_catalog_is_rewritten_and_no_node_loses_an_image(
    drill: Drill, workdir: Path, registry: Registry
) -> None:
    """NATS restarted with empty storage: the catalog rewritten, pulls go on, no image lost."""
    before, after = (
        push_image(registry.host, f"nl/{name}-{uuid.uuid4().hex[:6]}", "v1", size_mib=5)
        for name in ("before", "after")
    )
    with drill_cluster(workdir, [registry.host]) as cluster:
        cluster.deploy("before", before.ref)
        cluster.wait_warm(before.ref)
        catalog, status = CatalogStore(cluster.bus), StatusStore(cluster.bus)

        def reports_warm() -> bool:
            try:
                record = status.get(cluster.node)
            except BusUnavailable:
                return False
            return record.reported and record.warm_count == record.expected_count == 1

        # Recorded before the loss, so the worker has nothing new to say afterwards.
        wait_for(reports_warm, 30, "the node's status", cluster.logs)
        revision = cluster.bus.kv_state(CATALOG_BUCKET).revision
        held_before = set(cluster.containerd.image_refs())

        cluster.nats.restart_empty()

        def slice_holds(image: str) -> bool:
            try:
                node_slice, _ = catalog.get_slice(cluster.node)
            except (UnknownNode, BusUnavailable):
                return False
            return image in {item.image for item in node_slice.images}

        rewritten = wait_for(
            lambda: slice_holds(before.ref), 30, "the node's slice rewritten", cluster.logs
        )
        held_meanwhile = set(cluster.containerd.image_refs())
        reported = wait_for(reports_warm, 30, "the node's status written again", cluster.logs)
        cluster.deploy("after", after.ref)
        deployed = time.monotonic()
        cluster.wait_warm(after.ref)
        warm_after = time.monotonic() - deployed
        reported_after = wait_for(
            lambda: bool(cluster.events.of(after.ref)), 30, "the pull event", cluster.logs
        )
        held_after = set(cluster.containerd.image_refs())
        watcher_log = cluster.watcher.log_path.read_text(errors="replace")
    assert rewritten <= REWRITTEN_WITHIN, f"the catalog came back {rewritten:.1f}s after NATS"
    assert before.ref in held_before
    lost = held_before - (held_meanwhile & held_after)
    assert not lost, f"the node lost images it had: {sorted(lost)}"
    assert "the catalog in NATS is gone" in watcher_log, watcher_log[-4000:]
    drill.record("catalog revision before NATS lost its storage", revision)
    drill.record(
        "node's slice back in the catalog after NATS restarted empty",
        f"{rewritten:.1f} s (bound {REWRITTEN_WITHIN:.0f} s; the leader checks every 2 s)",
    )
    drill.record("node's status written again, after the slice", f"{reported:.1f} s")
    drill.record("Deployment created after the loss, warm after", f"{warm_after:.1f} s")
    drill.record("worker's pull event on the emptied NATS, after warm", f"{reported_after:.1f} s")
    kept = len(held_before & held_meanwhile & held_after)
    drill.record(
        "image references the node held, still in containerd", f"{kept}/{len(held_before)}"
    )
