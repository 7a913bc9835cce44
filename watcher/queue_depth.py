"""How many messages wait in each node's queue: ``warm_queue_depth{queue}``.

A queue that grows belongs to a node whose worker is gone, stuck or far behind; it is the one
number that says so without asking thousands of workers. The leading watcher samples it from
the broker itself through kombu (a passive declare: LLEN on Redis, the queue's message count on
RabbitMQ), so it reads the same on both brokers and costs one round trip per node per interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from celery import Celery
from kombu.exceptions import KombuError
from prometheus_client import Gauge

from tasks.routing import queue_for_node

log = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("warm_queue_depth", "Messages waiting in a node's queue", ["queue"])
INTERVAL = 30.0  # seconds between samples


def sample(app: Celery, nodes: Iterable[str]) -> dict[str, int]:
    """The depth of each node's queue; a queue the broker does not have is empty."""
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        channel = connection.channel()
        try:
            for node in nodes:
                queue = queue_for_node(node)
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=True)[1])
                except connection.channel_errors:
                    depths[queue] = 0  # never declared, or (Redis) empty and so deleted
                    channel = connection.channel()  # AMQP closes a channel on a failed passive
        finally:
            channel.close()
    return depths


class QueueDepthSampler:
    """Samples every ``INTERVAL`` seconds while ``leading()``; publishes the gauge."""

    def __init__(
        self,
        app: Celery,
        nodes: Callable[[], list[str]],
        leading: Callable[[], bool],
        interval: float = INTERVAL,
    ) -> None:
        self._app = app
        self._nodes = nodes
        self._leading = leading
        self._interval = interval
        self._published: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            if self._leading():
                self.update()

    def update(self) -> None:
        try:
            depths = sample(self._app, self._nodes())
        except (KombuError, OSError) as error:
            log.warning("queue depths not sampled: %s", error)
            return
        for queue in self._published - set(depths):
            QUEUE_DEPTH.remove(queue)  # the node left: its series goes too
        for queue, depth in depths.items():
            QUEUE_DEPTH.labels(queue).set(depth)
        self._published = set(depths)
