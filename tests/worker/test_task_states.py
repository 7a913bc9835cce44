"""Each node task ends in the Celery state that says what happened, as Flower reads it.

A real ``python -m worker`` on Redis pulls through containerd; the test listens to Celery's own
task events (the stream Flower consumes) and reads the state and exception of each task there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.app.defaults import DEFAULTS

from localcluster import Containerd, Registry, free_port, push_image
from localcluster.harness import TaskEvents, Worker, start_worker
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage
from tasks.names import PULL_IMAGE, REWARM_NODE

MAX_RETRIES = 10  # start_worker's WARM_PULL_MAX_RETRIES


@pytest.fixture(scope="module")
def worker(
    node: Containerd, redis_server: RedisServer, nats_server: NatsServer, workdir: Path
) -> Iterator[Worker]:
    running = start_worker(node.endpoint, redis_server, nats_server, workdir / "logs")
    yield running
    running.stop()


@pytest.fixture
def task_events(worker: Worker) -> Iterator[TaskEvents]:
    with TaskEvents(str(worker.client.conf.broker_url)) as events:
        yield events


def missing_ref(registry: Registry) -> str:
    return f"{registry.host}/states/missing-{uuid.uuid4().hex[:6]}:v1"  # never pushed


def test_a_pull_ends_in_success_with_its_outcome(
    worker: Worker, task_events: TaskEvents, registry: Registry
) -> None:
    image = push_image(registry.host, f"states/ok-{uuid.uuid4().hex[:6]}", "v1", size_mib=1)

    task = worker.send(PULL_IMAGE, image=image.ref)

    assert task_events.first(task, "succeeded")["result"] == "'pulled'"


def test_a_permanent_failure_ends_in_failure_with_the_runtimes_reason_and_no_retry(
    worker: Worker, task_events: TaskEvents, registry: Registry
) -> None:
    missing = missing_ref(registry)

    task = worker.send(PULL_IMAGE, image=missing)

    failed = task_events.first(task, "failed")
    assert failed["exception"].startswith("PullFailedError(")
    assert "not found" in failed["exception"] and "\\n" not in failed["exception"]
    assert [e["type"] for e in task_events.of(task) if e["type"] == "task-retried"] == []
    assert "Traceback" not in worker.process.log_tail(50_000)  # an expected outcome, one line


def test_a_transient_failure_shows_as_retry_with_its_reason_then_succeeds(
    worker: Worker, task_events: TaskEvents, node: Containerd, workdir: Path
) -> None:
    with Registry(workdir / f"states-{uuid.uuid4().hex[:4]}") as flaky:
        node.add_insecure_registry(flaky.host)
        image = push_image(flaky.host, "states/flaky", "v1", size_mib=1)
        flaky.pause()

        task = worker.send(PULL_IMAGE, image=image.ref)
        retried = task_events.first(task, "retried")
        flaky.resume()

        succeeded = task_events.first(task, "succeeded", chain=True)  # a later attempt
    assert "TransientPullError(" in retried["exception"]  # Celery's Retry(..., reason, delay)
    assert flaky.host in retried["exception"]
    assert succeeded["result"] == "'pulled'" and succeeded["uuid"] != task
    # The retried attempt stays RETRY: nothing of it comes after its task-retried event.
    assert task_events.of(task)[-1]["type"] == "task-retried"


def test_a_pull_out_of_retries_ends_in_failure_saying_it_gave_up(
    worker: Worker, task_events: TaskEvents
) -> None:
    unreachable = f"127.0.0.1:{free_port()}/states/nowhere:v1"  # nothing listens there

    task = worker.client.send_task(
        PULL_IMAGE,
        kwargs={"node": worker.node, "image": unreachable},
        queue=f"warm.node.{worker.node}",
        retries=MAX_RETRIES,  # as if this were the last retry
    ).id

    failed = task_events.first(task, "failed")
    assert failed["exception"].startswith(f"PullFailedError('gave up after {MAX_RETRIES + 1}")


def test_a_rewarm_that_leaves_an_image_missing_ends_in_failure_naming_it(
    worker: Worker, task_events: TaskEvents, registry: Registry, bus: NatsBus
) -> None:
    good = push_image(registry.host, f"states/rw-{uuid.uuid4().hex[:6]}", "v1", size_mib=1)
    missing = missing_ref(registry)
    CatalogStore(bus).put_slice(NodeSlice(worker.node, (SliceImage(good.ref), SliceImage(missing))))

    task = worker.send(REWARM_NODE, revision=0)

    failed = task_events.first(task, "failed")
    assert failed["exception"].startswith("RewarmIncompleteError('1 of 2 image(s) not warm: ")
    assert f"{missing} (" in failed["exception"] and good.ref not in failed["exception"]


def test_the_config_a_worker_shows_holds_only_celery_settings(
    node: Containerd, redis_server: RedisServer, nats_server: NatsServer, workdir: Path
) -> None:
    # `celery inspect` needs remote control, which node workers leave off unless asked.
    worker = start_worker(node.endpoint, redis_server, nats_server, workdir / "logs",
                          WARM_WORKER_REMOTE_CONTROL="true")  # fmt: skip
    try:
        inspect = worker.client.control.inspect([f"warm@{worker.node}"], timeout=10)
        (shown,) = (inspect.conf() or {}).values()
    finally:
        worker.stop()

    assert shown["worker_send_task_events"] is True
    assert shown["task_send_sent_event"] is True
    unknown = set(shown) - set(DEFAULTS) - {"deprecated_settings"}  # Celery's own bookkeeping
    assert unknown == set()  # no module names (REWARM_CATALOG, load_settings) posing as settings
