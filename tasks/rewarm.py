"""Re-warm fan-out: one small message per node, shared by beat and ``celery -A tasks rewarm``.

A re-warm never sends one task per (node, image) pair, nor the image list: each node gets
``rewarm_node(node, revision)`` on its own queue, reads its slice of the catalog and pulls only
what its runtime lacks. 5,000 nodes cost 5,000 messages whatever the catalog's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from .catalog import CatalogStore, UnknownNode
from .images import normalize_image
from .names import REWARM_NODE
from .routing import queue_for_node


@dataclass(frozen=True)
class RewarmSent:
    node: str
    revision: int


def dispatch_rewarm(
    app: Celery,
    catalog: CatalogStore,
    nodes: Sequence[str] = (),
    images: Sequence[str] = (),
) -> list[RewarmSent]:
    """Send ``rewarm_node`` to ``nodes`` (default: every node in the catalog).

    ``images`` narrows each node's re-warm to those references. An unknown node raises
    :class:`UnknownNode` before anything is sent, so a typo does not re-warm half a list.
    """
    wanted = [normalize_image(image) for image in images]
    known = catalog.nodes()
    missing = sorted(set(nodes) - set(known))
    if missing:
        raise UnknownNode(f"not in the catalog: {', '.join(missing)}")
    sent = []
    with app.producer_or_acquire() as producer:
        for node in nodes or known:
            _, revision = catalog.get_slice(node)
            app.send_task(
                REWARM_NODE,
                kwargs={"node": node, "revision": revision, "images": wanted},
                queue=queue_for_node(node),
                producer=producer,
            )
            sent.append(RewarmSent(node, revision))
    return sent
