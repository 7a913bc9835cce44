"""Pull behaviour of one node, on a real containerd pulling from a real registry.

Skip-if-present, moved tags, the concurrency bound (measured on real CRI pulls), merged
duplicates, the disk budget and the classification of failures. Presence is always read back
through CRI, never taken from the worker's own report.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker_testing import FreshImage, MakeAgent, worker_settings

from localcluster import Containerd, Registry, push_image
from localcluster.harness import Events, registry_requests
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, Outcome, SliceImage
from tasks.names import STATUS_BUCKET
from tasks.status import StatusStore
from worker import metrics
from worker.agent import NodeAgent
from worker.runtime.cri import CriRuntime


def test_a_present_image_is_not_pulled_again(
    make_agent: MakeAgent, fresh_image: FreshImage, node: Containerd, events: Events
) -> None:
    agent, runtime = make_agent()
    image = fresh_image(2)

    first = agent.pull(image.ref)
    second = agent.pull(image.ref)

    assert (first.outcome, second.outcome) == (Outcome.PULLED, Outcome.PRESENT)
    assert runtime.pulls == [image.ref]
    assert image.ref in node.image_refs()
    assert first.size and first.size > 2 * 1024 * 1024  # bytes, as the runtime counts them
    events.wait_for(lambda: len(events.of(image.ref)) == 2, 10, "two pull events")


def test_rewarm_lists_once_and_pulls_only_what_the_slice_lacks(
    make_agent: MakeAgent, fresh_image: FreshImage, bus: NatsBus, node_name: str, node: Containerd
) -> None:
    agent, runtime = make_agent()
    held, lacking = fresh_image(), fresh_image()
    agent.pull(held.ref)
    runtime.pulls.clear()
    CatalogStore(bus).put_slice(
        NodeSlice(node_name, (SliceImage(held.ref), SliceImage(lacking.ref)))
    )

    report = agent.rewarm(0, [])

    assert (report.present, report.pulled) == (1, 1)
    assert runtime.pulls == [lacking.ref]
    assert {held.ref, lacking.ref} <= node.image_refs()
    assert StatusStore(bus).get(node_name).images == {}  # nothing of the slice is missing
    written = bus.kv_revision(STATUS_BUCKET)
    assert agent.rewarm(0, []).present == 2
    assert bus.kv_revision(STATUS_BUCKET) == written  # a re-warm that changes nothing writes


def test_a_moved_tag_is_pulled_again(
    make_agent: MakeAgent, registry: Registry, node: Containerd
) -> None:
    agent, runtime = make_agent()
    repository = f"wt/moving-{uuid.uuid4().hex[:6]}"
    old = push_image(registry.host, repository, "stable")
    assert agent.pull_entry(SliceImage(old.ref, digest=old.digest)).outcome is Outcome.PULLED
    new = push_image(registry.host, repository, "stable")  # same tag, new content
    assert new.digest != old.digest

    moved = agent.pull_entry(SliceImage(new.ref, digest=new.digest))
    again = agent.pull_entry(SliceImage(new.ref, digest=new.digest))

    assert (moved.outcome, again.outcome) == (Outcome.PULLED, Outcome.PRESENT)
    # By the catalog's digest, then the tag (CRI keeps no tag for a pull by digest).
    assert runtime.pulls == [old.digest_ref, old.ref, new.digest_ref, new.ref]
    status = agent.runtime.image_status(new.ref)  # what the kubelet asks for
    assert status is not None and status.known_as(new.digest_ref)


def test_at_most_max_concurrent_pulls_run_at_once(
    make_agent: MakeAgent, fresh_image: FreshImage, node: Containerd
) -> None:
    agent, runtime = make_agent(max_concurrent_pulls=2)
    images = [fresh_image(25) for _ in range(6)]
    start = threading.Barrier(len(images))

    def pull(ref: str) -> Outcome:
        start.wait()
        return agent.pull(ref).outcome

    with ThreadPoolExecutor(len(images)) as pool:
        outcomes = list(pool.map(pull, [image.ref for image in images]))

    assert outcomes == [Outcome.PULLED] * len(images)
    assert len(runtime.pulls) == len(images)
    assert runtime.max_active == 2  # the bound was reached, and never exceeded
    assert {image.ref for image in images} <= node.image_refs()


def test_concurrent_requests_for_one_image_become_one_pull(
    make_agent: MakeAgent, fresh_image: FreshImage, registry: Registry
) -> None:
    agent, runtime = make_agent()
    image = fresh_image(30)
    callers = 5
    start = threading.Barrier(callers)

    def pull(_: int) -> Outcome:
        start.wait()
        return agent.pull(image.ref).outcome

    with ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(pull, range(callers)))

    assert runtime.pulls == [image.ref]
    assert set(outcomes) <= {Outcome.PULLED, Outcome.PRESENT}
    repository = image.ref.split("/", 1)[1].split(":")[0]
    layer_gets = [
        line for line in registry_requests(registry, f"/v2/{repository}/blobs/") if "GET" in line
    ]
    assert len(layer_gets) == 2  # config and layer, each fetched once


def test_a_missing_tag_fails_once_and_periodic_rewarms_leave_it_alone(
    make_agent: MakeAgent, registry: Registry, bus: NatsBus, node_name: str
) -> None:
    agent, runtime = make_agent()
    missing = f"{registry.host}/wt/absent-{uuid.uuid4().hex[:6]}:nope"
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(missing),)))

    failed = agent.pull(missing)
    periodic = agent.rewarm(0, [])

    assert failed.outcome is Outcome.FAILED
    assert "not found" in failed.reason
    assert runtime.pulls == [missing]  # the re-warm did not ask the registry again
    assert missing in periodic.failed
    explicit = agent.rewarm(0, [missing])  # a user asking for it explicitly retries it
    assert len(runtime.pulls) == 2 and missing in explicit.failed


def test_a_registry_that_is_down_is_a_transient_failure(
    make_agent: MakeAgent, workdir: Path
) -> None:
    agent, _ = make_agent()
    with Registry(workdir / f"down-{uuid.uuid4().hex[:4]}") as flaky:
        image = push_image(flaky.host, "wt/flaky", "v1")
        flaky.pause()
        result = agent.pull(image.ref)

    assert result.outcome is Outcome.RETRYING
    assert "connection refused" in result.reason


def test_above_the_disk_budget_a_pull_is_skipped_and_reported(
    make_agent: MakeAgent, fresh_image: FreshImage, node: Containerd, bus: NatsBus, node_name: str
) -> None:
    agent, runtime = make_agent(disk_budget_percent=0.01)  # any real disk is fuller than this
    image = fresh_image()
    skips = metrics.DISK_BUDGET_SKIPS._value.get()

    result = agent.pull(image.ref)

    assert result.outcome is Outcome.SKIPPED
    assert result.reason.startswith("disk budget")
    assert runtime.pulls == []
    assert image.ref not in node.image_refs()
    assert metrics.DISK_BUDGET_SKIPS._value.get() == skips + 1
    recorded = StatusStore(bus).get(node_name).images[image.ref]
    assert (recorded.outcome, recorded.reason) == ("skipped", result.reason)

    roomy, _ = make_agent(disk_budget_percent=99.9)
    assert roomy.pull(image.ref).outcome is Outcome.PULLED


def test_a_rewarm_pulls_a_tag_the_catalog_saw_move(
    make_agent: MakeAgent, registry: Registry, bus: NatsBus, node_name: str
) -> None:
    agent, runtime = make_agent()
    repository = f"wt/rewarm-moving-{uuid.uuid4().hex[:6]}"
    old = push_image(registry.host, repository, "latest")
    agent.pull_entry(SliceImage(old.ref))
    new = push_image(registry.host, repository, "latest")
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(new.ref, digest=new.digest),)))

    moved = agent.rewarm(0, [])
    tag_requests = len(registry_requests(registry, f"/v2/{repository}/manifests/latest"))
    settled = agent.rewarm(0, [])

    # The digest in the slice tells the node it holds :latest: it asks the registry nothing.
    assert len(registry_requests(registry, f"/v2/{repository}/manifests/latest")) == tag_requests
    assert (moved.pulled, moved.present) == (1, 0)
    assert (settled.pulled, settled.present) == (0, 1)
    assert runtime.pulls == [old.ref, new.digest_ref, new.ref]
    status = agent.runtime.image_status(new.ref)
    assert status is not None and status.known_as(new.digest_ref)


def test_a_runtime_that_is_down_is_a_transient_failure(
    nats_server: NatsServer, bus: NatsBus, tmp_path: Path
) -> None:
    gone = CriRuntime(f"unix://{tmp_path}/containerd.sock")
    settings = worker_settings(nats_server.url, gone.endpoint)
    agent = NodeAgent(settings, "node-without-runtime", gone, bus)

    result = agent.pull("127.0.0.1:1/wt/any:v1")

    assert result.outcome is Outcome.RETRYING
    assert "UNAVAILABLE" in result.reason
    gone.close()


def test_a_rewarm_follows_a_latest_tag_that_moved_without_a_digest_in_the_catalog(
    make_agent: MakeAgent, registry: Registry, bus: NatsBus, node_name: str, node: Containerd
) -> None:
    agent, runtime = make_agent()  # the default: refresh :latest tags
    repository = f"wt/refresh-{uuid.uuid4().hex[:6]}"
    first = push_image(registry.host, repository, "latest")
    pinned = push_image(registry.host, f"{repository}-pinned", "v1")
    slice_ = NodeSlice(node_name, (SliceImage(first.ref), SliceImage(pinned.ref)))
    CatalogStore(bus).put_slice(slice_)
    agent.rewarm(0, [])
    runtime.pulls.clear()

    unchanged = agent.rewarm(0, [])
    moved_to = push_image(registry.host, repository, "latest")
    moved = agent.rewarm(0, [])

    assert (unchanged.pulled, unchanged.present) == (0, 2)
    assert (moved.pulled, moved.present) == (1, 1)
    assert runtime.pulls == [first.ref, first.ref]  # :latest asked twice, v1 never
    assert moved_to.digest_ref in _digests(node)


def test_refresh_none_leaves_a_moved_tag_alone(
    make_agent: MakeAgent, registry: Registry, bus: NatsBus, node_name: str, node: Containerd
) -> None:
    agent, runtime = make_agent(refresh_tags="none")
    repository = f"wt/norefresh-{uuid.uuid4().hex[:6]}"
    first = push_image(registry.host, repository, "latest")
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(first.ref),)))
    agent.rewarm(0, [])
    moved_to = push_image(registry.host, repository, "latest")

    report = agent.rewarm(0, [])

    assert (report.pulled, report.present) == (0, 1)
    assert runtime.pulls == [first.ref]
    assert moved_to.digest_ref not in _digests(node)


def _digests(node: Containerd) -> set[str]:
    """Every name@digest the node's containerd holds (read through ctr, not the worker)."""
    return {ref for ref in node.image_refs() if "@sha256:" in ref}
