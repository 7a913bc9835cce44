"""``python -m worker`` as a user runs it: Celery on Redis, results on NATS, pulls through CRI.

What only the real process shows: Celery's retries with backoff when the registry is down for a
while, a missing tag costing exactly one attempt however many re-warms follow, a worker
SIGKILLed in the middle of a pull whose message comes back (late ack) so the image still ends
up warm, and the health and metrics endpoints.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import Containerd, Registry, free_port, push_image
from localcluster.harness import (
    WARM_TIMEOUT,
    Events,
    Worker,
    registry_requests,
    start_worker,
    wait_for_download,
)
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, Outcome, SliceImage
from tasks.names import PULL_IMAGE, REWARM_NODE, pull_events_subject, rewarm_events_subject

VISIBILITY_TIMEOUT = 5


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"metrics": free_port(), "health": free_port()}


@pytest.fixture(scope="module")
def worker(
    node: Containerd,
    redis_server: RedisServer,
    nats_server: NatsServer,
    workdir: Path,
    ports: dict[str, int],
) -> Iterator[Worker]:
    running = start_worker(
        node.endpoint,
        redis_server,
        nats_server,
        workdir / "logs",
        WARM_METRICS_PORT=str(ports["metrics"]),
        WARM_HEALTH_PORT=str(ports["health"]),
    )
    yield running
    running.stop()


@pytest.fixture
def worker_events(bus: NatsBus, worker: Worker) -> Events:
    return Events.follow(bus, pull_events_subject(worker.node))


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_a_registry_down_for_a_while_is_retried_with_backoff_until_warm(
    worker: Worker,
    worker_events: Events,
    node: Containerd,
    workdir: Path,
    ports: dict[str, int],
) -> None:
    with Registry(workdir / f"flaky-{uuid.uuid4().hex[:4]}") as flaky:
        node.add_insecure_registry(flaky.host)
        image = push_image(flaky.host, "wt/flaky", "v1", size_mib=5)
        flaky.pause()
        worker.send(PULL_IMAGE, image=image.ref)
        worker_events.wait_for(  # the registry stays down over several retries
            lambda: [e.outcome for e in worker_events.of(image.ref)].count(Outcome.RETRYING) >= 2,
            WARM_TIMEOUT,
            "two transient failures",
        )
        flaky.resume()
        worker_events.wait_for(
            lambda: any(e.outcome is Outcome.PULLED for e in worker_events.of(image.ref)),
            WARM_TIMEOUT,
            "the pull after the registry came back",
        )

    attempts = [e.attempt for e in worker_events.of(image.ref)]
    assert attempts == list(range(1, len(attempts) + 1))  # one result per retry, in order
    assert len(attempts) <= 10  # backoff, not a storm: within max retries
    assert image.ref in node.image_refs()
    assert get(f"http://127.0.0.1:{ports['health']}/healthz")[0] == 200
    _, metrics = get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert 'warm_pulls_total{outcome="retrying"}' in metrics
    assert 'warm_pulls_total{outcome="pulled"}' in metrics


def test_a_missing_tag_costs_one_attempt_however_many_rewarms_follow(
    worker: Worker, worker_events: Events, bus: NatsBus, registry: Registry
) -> None:
    repository = f"wt/typo-{uuid.uuid4().hex[:6]}"
    missing = f"{registry.host}/{repository}:does-not-exist"
    CatalogStore(bus).put_slice(NodeSlice(worker.node, (SliceImage(missing),)))
    rewarms: list[bytes] = []
    bus.subscribe(rewarm_events_subject(worker.node), lambda _subject, data: rewarms.append(data))

    worker.send(PULL_IMAGE, image=missing)
    worker_events.wait_for(lambda: bool(worker_events.of(missing)), WARM_TIMEOUT, "the failure")
    asked = len(registry_requests(registry, f"/v2/{repository}/manifests/"))
    for _ in range(2):
        worker.send(REWARM_NODE, revision=0)
    worker_events.wait_for(lambda: len(rewarms) == 2, WARM_TIMEOUT, "two re-warms")

    # Each re-warm says it left the image alone; a permanent failure schedules no retry.
    assert all("not retried" in json.loads(report)["failed"][missing] for report in rewarms)
    (failure,) = worker_events.of(missing)
    assert failure.outcome is Outcome.FAILED and failure.attempt == 1
    assert "not found" in failure.reason
    assert asked >= 1
    assert len(registry_requests(registry, f"/v2/{repository}/manifests/")) == asked


def test_a_worker_killed_mid_pull_leaves_the_image_to_its_successor(
    node: Containerd,
    registry: Registry,
    redis_server: RedisServer,
    nats_server: NatsServer,
    workdir: Path,
    bus: NatsBus,
) -> None:
    image = push_image(registry.host, f"wt/big-{uuid.uuid4().hex[:6]}", "v1", size_mib=200)
    worker = start_worker(
        node.endpoint,
        redis_server,
        nats_server,
        workdir / "logs",
        WARM_BROKER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )
    events = Events.follow(bus, pull_events_subject(worker.node))
    try:
        worker.send(PULL_IMAGE, image=image.ref)
        wait_for_download(registry, image.ref)
        assert worker.process.pid is not None
        os.kill(worker.process.pid, signal.SIGKILL)  # mid-pull: no ack, no goodbye
        killed_at = time.monotonic()
        assert not events.received  # it died before reporting anything
        assert image.ref not in node.image_refs()

        # Redis hands an unacknowledged message out again once its visibility timeout has
        # passed; a starting worker sweeps for such messages at once (later ones, only every
        # ~100 s), so the successor starts after the timeout, as a restart after a crash would.
        time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT + 1 - time.monotonic()))
        worker.start()  # the same node's worker, as the DaemonSet restarts it
        events.wait_for(lambda: bool(events.of(image.ref)), WARM_TIMEOUT, "the redelivered pull")
    finally:
        worker.stop()

    (result,) = events.of(image.ref)
    assert result.outcome in (Outcome.PULLED, Outcome.PRESENT)
    assert image.ref in node.image_refs()
    print(f"\nSIGKILL mid-pull -> {result.outcome} {time.monotonic() - killed_at:.1f}s later")


def test_sigterm_lets_the_running_pull_finish_before_the_worker_exits(
    node: Containerd,
    registry: Registry,
    redis_server: RedisServer,
    nats_server: NatsServer,
    workdir: Path,
    bus: NatsBus,
) -> None:
    image = push_image(registry.host, f"wt/term-{uuid.uuid4().hex[:6]}", "v1", size_mib=150)
    worker = start_worker(node.endpoint, redis_server, nats_server, workdir / "logs")
    events = Events.follow(bus, pull_events_subject(worker.node))
    try:
        worker.send(PULL_IMAGE, image=image.ref)
        wait_for_download(registry, image.ref)
        worker.process.stop(grace=WARM_TIMEOUT)  # SIGTERM: Celery's warm shutdown
    finally:
        worker.stop()

    assert "Warm shutdown" in worker.process.log_tail(20_000)
    events.wait_for(lambda: bool(events.of(image.ref)), 5, "the pull's result")
    (result,) = events.of(image.ref)
    assert result.outcome is Outcome.PULLED
    assert image.ref in node.image_refs()
