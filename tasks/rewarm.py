"""Re-warm fan-out: one small message per node, shared by beat and ``celery -A tasks rewarm``.

A re-warm never sends one task per (node, image) pair, nor the image list: each node gets
``rewarm_node(node, revision)`` on its own queue, reads its slice of the catalog and pulls only
what its runtime lacks. 5,000 nodes cost 5,000 messages whatever the catalog's size.

The revision sent is the catalog bucket's latest, read once (not one KV read per node): every
slice is at or below it, so a node's report for it covers whatever the slice holds now.

With a ``window``, the sends are paced evenly over that many seconds by the sender itself, so
thousands of nodes do not hit the registry in the same second. Pacing in the sender, not with
ETA/countdown messages, because on Redis an ETA task sits unacknowledged in a worker's memory
and is redelivered after the visibility timeout; a paced send is an ordinary message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from .bus import NatsBus
from .catalog import CatalogStore, UnknownImage, UnknownNode
from .images import normalize_image
from .names import CATALOG_BUCKET, REWARM_NODE
from .routing import queue_for_node

log = logging.getLogger(__name__)

# Sleeping shorter than this costs more in wake-ups than it buys in evenness.
MIN_PAUSE = 0.01
# Messages per broker round trip: Redis gets them in one pipeline; AMQP publishes each at once.
BATCH = 500
# Seconds a fan-out waits out a broker that fails (a restart, a failover) before it gives up.
BROKER_PATIENCE = 60.0


@dataclass(frozen=True)
class RewarmSent:
    node: str
    revision: int


def dispatch_rewarm(
    app: Celery,
    bus: NatsBus,
    nodes: Sequence[str] = (),
    images: Sequence[str] = (),
    *,
    window: float = 0.0,
    expires: float | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    broker_patience: float = BROKER_PATIENCE,
    force: bool = False,
    retry_failed: bool = False,
    check_only: bool = False,
) -> list[RewarmSent]:
    """Send ``rewarm_node`` to ``nodes`` (default: every node in the catalog).

    ``images`` narrows each node's re-warm to those references. An unknown node raises
    :class:`UnknownNode`, and an image the catalog lacks :class:`UnknownImage` (unless
    ``force``: then each node pulls it once), before anything is sent, so a typo does not
    re-warm half a list. ``retry_failed`` retries permanent failures that periodic re-warms
    skip; ``check_only`` pulls nothing, the nodes only record what their runtimes hold.
    ``keep_going`` is asked before each pause of a paced send; False stops the fan-out (beat
    uses it to renew its lease, and to stop if it lost it). ``expires`` (seconds) makes a node
    that was down drop a re-warm that a newer one has superseded, instead of running them all.
    ``broker_patience`` is how long a failing broker is waited out before its error is raised.
    """
    wanted = [normalize_image(image) for image in images]
    catalog = CatalogStore(bus)
    targets = _targets(catalog, nodes)
    unlisted = [image for image in wanted if catalog.get_entry(image) is None]
    if unlisted and not force:
        raise UnknownImage(unlisted)
    revision = bus.kv_revision(CATALOG_BUCKET)
    kwargs: dict[str, object] = {"revision": revision}
    options: dict[str, object] = {
        "images": wanted,
        "unlisted": unlisted,
        "retry_failed": retry_failed,
        "check_only": check_only,
    }
    kwargs |= {name: value for name, value in options.items() if value}  # as small as can be
    send = _ChunkSender(app, kwargs, expires, broker_patience)
    sent: list[RewarmSent] = []
    due: list[str] = []
    started = time.monotonic()
    for index, node in enumerate(targets):
        pause = started + window * index / len(targets) - time.monotonic()
        if pause >= MIN_PAUSE or len(due) >= BATCH:
            sent += send(due, revision)  # what is due goes out before the pause
            due = []
            if pause >= MIN_PAUSE:
                if not keep_going():
                    return sent
                time.sleep(pause)
        due.append(node)
    return sent + send(due, revision)


class _ChunkSender:
    """Sends a chunk of re-warms in one broker round trip, and again if the broker failed.

    A batch that fails mid-way has an uncertain outcome (kombu says so), so the whole chunk is
    sent again once the broker answers: a node may get a re-warm twice, which costs one
    ListImages, but never none. After ``patience`` seconds of failures the error is
    raised, so a broker that is gone for good is reported rather than waited on forever.
    """

    def __init__(
        self, app: Celery, kwargs: dict[str, object], expires: float | None, patience: float
    ) -> None:
        self._app = app
        self._kwargs = kwargs
        self._expires = expires
        self._patience = patience

    def __call__(self, nodes: list[str], revision: int) -> list[RewarmSent]:
        if not nodes:
            return []
        give_up = time.monotonic() + self._patience
        delay = 0.2
        while True:
            try:
                self._send(nodes)
                return [RewarmSent(node, revision) for node in nodes]
            except (KombuError, ConnectionError, OSError) as error:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning("broker failed during a fan-out (%s); resending %d", error, len(nodes))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _send(self, nodes: list[str]) -> None:
        with self._app.producer_or_acquire() as producer, producer.batch(BATCH):
            declare = _declare(producer)
            for node in nodes:
                message = {"node": node, **self._kwargs}
                self._app.send_task(
                    REWARM_NODE,
                    kwargs=message,
                    queue=queue_for_node(node),
                    producer=producer,
                    declare=declare,
                    expires=self._expires,
                    argsrepr="()",
                    kwargsrepr=repr(message),  # Celery's safe repr costs more than the send
                )


def _declare(producer: Any) -> list[Any] | None:
    """Declare each node's queue (Celery's default), except on Redis.

    On RabbitMQ a message to an undeclared queue is dropped, so the queue is declared (once
    per queue and connection). On Redis a queue is a list that the push creates, the message
    goes to it by name, and declaring costs a round trip per node for nothing.
    """
    return [] if producer.connection.transport.driver_type == "redis" else None


def _targets(catalog: CatalogStore, nodes: Sequence[str]) -> list[str]:
    known = catalog.nodes()
    missing = sorted(set(nodes) - set(known))
    if missing:
        raise UnknownNode(f"not in the catalog: {', '.join(missing)}")
    return list(dict.fromkeys(nodes)) if nodes else known
