"""warm_queue_depth read from a real broker: Redis, and RabbitMQ when it answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from prometheus_client import REGISTRY

from localcluster.harness import unavailable
from localcluster.services import RedisServer, rabbitmq_answers, rabbitmq_vhost
from tasks.names import PULL_IMAGE
from tasks.routing import queue_for_node
from watcher.queue_depth import QueueDepthSampler, sample


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Celery]:
    if request.param == "redis":
        url = f"{redis_server.url}/5"
        app = Celery("depth", broker=url, set_as_current=False)
        yield app
        app.close()
        return
    if not rabbitmq_answers():
        unavailable("RabbitMQ is not answering on 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        app = Celery("depth", broker=url, set_as_current=False)
        yield app
        app.close()


def gauge(queue: str) -> float | None:
    return REGISTRY.get_sample_value("warm_queue_depth", {"queue": queue})


def test_depth_of_each_node_queue_and_none_for_nodes_that_left(broker: Celery) -> None:
    busy, idle = f"busy-{uuid.uuid4().hex[:6]}", f"idle-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        broker.send_task(PULL_IMAGE, kwargs={"node": busy}, queue=queue_for_node(busy))

    assert sample(broker, [busy, idle]) == {queue_for_node(busy): 3, queue_for_node(idle): 0}

    nodes = [busy, idle]
    sampler = QueueDepthSampler(broker, lambda: list(nodes), lambda: True)
    sampler.update()
    assert gauge(queue_for_node(busy)) == 3
    assert gauge(queue_for_node(idle)) == 0
    nodes.remove(busy)  # the node left the cluster
    sampler.update()
    assert gauge(queue_for_node(busy)) is None
