"""The re-warm options the CLI offers, on a real containerd: retry failures now, warm an image
outside the catalog once, and a check that pulls nothing but makes the status true again.

Presence is read back through containerd (``ctr``), pulls counted at the runtime driver.
"""

from __future__ import annotations

import uuid

from worker_testing import FreshImage, MakeAgent

from localcluster import Containerd, Registry
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage
from tasks.status import StatusStore


def test_retry_failed_asks_the_registry_again_for_an_image_a_periodic_rewarm_skips(
    make_agent: MakeAgent, registry: Registry, bus: NatsBus, node_name: str
) -> None:
    agent, runtime = make_agent()
    missing = f"{registry.host}/wt/absent-{uuid.uuid4().hex[:6]}:nope"
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(missing),)))
    agent.pull(missing)

    skipped = agent.rewarm(0, [])
    retried = agent.rewarm(0, [], retry_failed=True)

    assert "rewarm --retry-failed" in skipped.failed[missing]  # the way out, named
    assert runtime.pulls == [missing, missing]  # the periodic one did not ask, the retry did
    assert "not found" in retried.failed[missing]


def test_an_unlisted_image_is_pulled_once_without_joining_the_nodes_expected_images(
    make_agent: MakeAgent, fresh_image: FreshImage, node: Containerd, bus: NatsBus, node_name: str
) -> None:
    agent, _ = make_agent()
    listed, extra = fresh_image(), fresh_image()
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(listed.ref),)))

    report = agent.rewarm(0, [extra.ref], unlisted=[extra.ref])

    assert report.pulled == 1 and not report.failed
    assert extra.ref in node.image_refs() and listed.ref not in node.image_refs()
    status = StatusStore(bus).get(node_name)
    assert status.expected_count == 1 and list(status.images) == [listed.ref]  # listed: missing


def test_a_check_pulls_nothing_and_reports_an_image_removed_since_as_missing(
    make_agent: MakeAgent, fresh_image: FreshImage, node: Containerd, bus: NatsBus, node_name: str
) -> None:
    agent, runtime = make_agent()
    kept, removed = fresh_image(), fresh_image()
    CatalogStore(bus).put_slice(
        NodeSlice(node_name, (SliceImage(kept.ref), SliceImage(removed.ref)))
    )
    agent.rewarm(0, [])
    assert StatusStore(bus).get(node_name).images == {}  # nothing of the slice is missing
    node.ctr("images", "rm", removed.ref)  # as kubelet's image GC would
    pulls = len(runtime.pulls)

    report = agent.rewarm(0, [], check_only=True)

    status = StatusStore(bus).get(node_name)
    assert len(runtime.pulls) == pulls and removed.ref not in node.image_refs()
    assert list(status.images) == [removed.ref] and status.warm_count == 1
    assert report.present == 1 and report.pulled == 0
