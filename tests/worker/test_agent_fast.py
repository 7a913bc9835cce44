"""The node agent's logic on the in-memory runtime, with the real NATS for catalog and status.

What a re-warm pulls and skips, how failures are classified and remembered, what the status
and the events say, and the retry schedule of the pull task, in milliseconds each. The same
flows on a real containerd are in tests/worker/test_pulls.py and test_worker_parts.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from worker_testing import worker_settings

from localcluster.harness import Events
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, Outcome, SliceImage
from tasks.settings import RuntimeSettings
from tasks.status import StatusStore
from worker import handlers
from worker.agent import NodeAgent, attach_agent
from worker.runtime import FailureKind
from worker.runtime.fake import FakeRuntime

APP = "example.com/team/app:v1"
LATEST = "example.com/team/tool:latest"


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def agent(nats_server: NatsServer, bus: NatsBus, node_name: str, runtime: FakeRuntime) -> NodeAgent:
    settings = worker_settings(nats_server.url, "fake", max_retries=2)
    return NodeAgent(settings, node_name, runtime, bus)


def put_slice(bus: NatsBus, node: str, *images: str) -> None:
    CatalogStore(bus).put_slice(NodeSlice(node, tuple(SliceImage(image) for image in images)))


def test_a_pull_is_published_and_recorded(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus, events: Events
) -> None:
    runtime.registry.push(APP)
    runtime.registry.fail(APP, FailureKind.TRANSIENT, "connection reset")
    agent.pull(APP)
    assert StatusStore(bus).get(agent.node).images[APP].outcome == Outcome.RETRYING

    result = agent.pull(APP)

    assert result.outcome is Outcome.PULLED
    assert result.image_id == runtime.list_images()[0].id
    events.wait_for(lambda: len(events.of(APP)) == 2, 5, "the pull events")
    assert events.of(APP)[-1].outcome is Outcome.PULLED
    status = StatusStore(bus).get(agent.node)  # a warm image is counted, no longer named
    assert APP not in status.images
    assert status.warm_count == 1


def test_a_rewarm_lists_once_and_pulls_only_what_is_missing(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    images = [f"example.com/team/app-{n}:v1" for n in range(3)]
    for image in images:
        runtime.registry.push(image)
    agent.pull(images[0])
    runtime.calls.clear()
    runtime.pulls.clear()
    put_slice(bus, agent.node, *images)

    report = agent.rewarm(0, [])

    assert (report.present, report.pulled, report.failed) == (1, 2, {})
    assert sorted(runtime.pulls) == images[1:]
    assert runtime.calls["list_images"] == 1
    assert runtime.calls["image_status"] == 2  # the size of each pulled image, nothing else
    status = StatusStore(bus).get(agent.node)
    assert (status.warm_count, status.expected_count, status.images) == (3, 3, {})


def test_a_permanent_failure_is_tried_once_until_asked_again(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    put_slice(bus, agent.node, APP)  # never pushed: the registry answers "manifest unknown"

    first = agent.rewarm(0, [])
    periodic = agent.rewarm(0, [])
    asked = agent.rewarm(0, [APP])

    assert "manifest unknown" in first.failed[APP]
    assert "not retried until its catalog entry changes" in periodic.failed[APP]
    assert "manifest unknown" in asked.failed[APP]
    assert runtime.pulls == [APP, APP]  # the periodic re-warm cost no registry request
    recorded = StatusStore(bus).get(agent.node).images[APP]
    assert (recorded.outcome, recorded.reason) == (Outcome.FAILED, asked.failed[APP])


def test_a_transient_failure_is_left_to_retry(agent: NodeAgent, runtime: FakeRuntime) -> None:
    runtime.registry.push(APP)
    runtime.registry.fail(APP, FailureKind.TRANSIENT, "503 service unavailable")

    failed = agent.pull(APP)
    retried = agent.pull(APP)

    assert (failed.outcome, failed.reason) == (Outcome.RETRYING, "503 service unavailable")
    assert retried.outcome is Outcome.PULLED


def test_a_runtime_that_is_down_costs_a_retry_not_the_worker(
    agent: NodeAgent, runtime: FakeRuntime
) -> None:
    runtime.down = True

    result = agent.pull(APP)

    assert result.outcome is Outcome.RETRYING
    assert "down" in result.reason


def test_a_full_disk_skips_the_pull(agent: NodeAgent, runtime: FakeRuntime) -> None:
    runtime.registry.push(APP)
    runtime.fill_disk(agent.settings.runtime.disk_budget_percent + 1)

    result = agent.pull(APP)

    assert result.outcome is Outcome.SKIPPED
    assert "disk budget" in result.reason
    assert runtime.pulls == []


def test_a_rewarm_follows_a_moved_latest_tag_and_leaves_others_alone(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    runtime.registry.push(LATEST)
    runtime.registry.push(APP)
    agent.pull(LATEST)
    agent.pull(APP)
    put_slice(bus, agent.node, LATEST, APP)
    unchanged = agent.rewarm(0, [])
    runtime.registry.push(LATEST)  # the tag moves
    runtime.pulls.clear()

    moved = agent.rewarm(0, [])

    assert (unchanged.pulled, unchanged.present) == (0, 2)
    assert (moved.pulled, moved.present) == (1, 1)
    assert runtime.pulls == [LATEST]  # v1 is not a tag that moves under the default policy


@pytest.fixture
def installed(agent: NodeAgent) -> Iterator[NodeAgent]:
    attach_agent(handlers.pull_image.app, agent)
    yield agent
    attach_agent(handlers.pull_image.app, None)


def test_the_pull_task_retries_then_records_a_failure(
    installed: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    runtime.registry.push(APP)
    runtime.registry.fail(APP, FailureKind.TRANSIENT, "connection reset", times=10)
    limit = installed.settings.runtime.max_retries

    # Each retry is a new task: run eagerly, the whole chain runs here, one attempt after another.
    handlers.pull_image.app.conf.task_always_eager = True
    try:
        handlers.pull_image.apply(kwargs={"node": installed.node, "image": APP})
    finally:
        handlers.pull_image.app.conf.task_always_eager = False

    assert runtime.pulls == [APP] * (limit + 1)
    failed = StatusStore(bus).get(installed.node).images[APP]
    assert failed.outcome == Outcome.FAILED
    assert failed.reason == f"gave up after {limit + 1} attempts: connection reset"


def test_the_pull_task_drops_a_message_for_another_node(
    installed: NodeAgent, runtime: FakeRuntime
) -> None:
    result = handlers.pull_image.apply(kwargs={"node": "elsewhere", "image": APP})

    assert result.get() == "misrouted"
    assert runtime.pulls == []


def test_backoff_stays_within_its_cap() -> None:
    cap = RuntimeSettings().retry_backoff_max
    delays = [handlers.backoff_seconds(retries, cap) for retries in range(1, 30)]
    assert all(0 <= delay <= cap for delay in delays)


def test_a_pull_with_its_catalog_entry_follows_the_digest_it_names(
    agent: NodeAgent, runtime: FakeRuntime
) -> None:
    old = runtime.registry.push(APP)
    agent.pull_entry(SliceImage(APP, digest=old))
    new = runtime.registry.push(APP)  # the tag moves

    moved = agent.pull_entry(SliceImage(APP, digest=new))
    unchanged = agent.pull_entry(SliceImage(APP, digest=new))

    assert (moved.outcome, unchanged.outcome) == (Outcome.PULLED, Outcome.PRESENT)
    name = APP.rsplit(":", 1)[0]  # each by its digest, then its tag (for the kubelet)
    assert runtime.pulls == [f"{name}@{old}", APP, f"{name}@{new}", APP]


def test_a_held_image_is_neither_pulled_by_a_rewarm_nor_by_a_pull_task(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    runtime.registry.push(APP)
    runtime.registry.push(LATEST)
    # A wave holds LATEST back from this node: its slice names it as held, not as an image.
    held = NodeSlice(agent.node, (SliceImage(APP),), held=(LATEST,))
    CatalogStore(bus).put_slice(held)

    report = agent.rewarm(0, [])
    result = agent.pull(LATEST)  # a pull task sent before the wave began

    assert report.pulled == 1 and runtime.pulls == [APP]
    assert result.outcome is Outcome.SKIPPED and "canary" in result.reason


def test_a_failure_pulled_again_under_a_new_digest_reads_missing_until_its_pull_ends(
    agent: NodeAgent, runtime: FakeRuntime, bus: NatsBus
) -> None:
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    CatalogStore(bus).put_slice(NodeSlice(agent.node, (SliceImage(APP, digest=old),)))
    assert agent.rewarm(0, []).failed  # not in the registry: failed for good
    status = StatusStore(bus)
    assert status.get(agent.node).images[APP].outcome == Outcome.FAILED
    seen: list[str] = []
    runtime.registry.push(APP)
    original = runtime.pull

    def pull(*args: object, **kwargs: object) -> str:
        seen.append(status.get(agent.node).images[APP].outcome)  # the record while pulling
        return original(*args, **kwargs)  # type: ignore[arg-type]

    runtime.pull = pull  # type: ignore[method-assign]
    CatalogStore(bus).put_slice(NodeSlice(agent.node, (SliceImage(APP, digest=new),)))

    agent.rewarm(0, [])

    assert seen and seen[0] == "missing"  # not the old digest's failure
