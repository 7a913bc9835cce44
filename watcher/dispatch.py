"""Turning catalog changes into KV writes, Celery tasks and NATS events.

Per node and batch: a few new images become ``pull_image`` tasks, more become one
``rewarm_node`` (the node diffs its slice against its runtime), and a node that joins gets one
``rewarm_node`` for its whole slice. Slices are written before any task is sent, so a node
that reads its slice always finds what the task was sent for.

When NATS or the broker fails mid-flush, the dispatcher remembers that it owes a full sync and
does it on the next flush: every slice rewritten, every node re-warmed. Re-warms only pull what
is missing, so owing too much is cheap and owing too little is impossible.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.models import CatalogChange, CatalogEntry, NodeSlice, SliceImage
from tasks.names import CATALOG_EVENTS, PULL_IMAGE, REWARM_NODE
from tasks.routing import queue_for_node

from .catalog import CatalogState, Changes

log = logging.getLogger(__name__)

MAX_SINGLE_PULLS = 3  # more new images than this for one node: send one re-warm instead


class Dispatcher:
    def __init__(self, app: Celery, bus: NatsBus, state: CatalogState) -> None:
        self._app = app
        self._bus = bus
        self._catalog = CatalogStore(bus)
        self._state = state
        self._owe_full_sync = True  # the first flush publishes everything
        self.revision = 0

    def flush(self, changes: Changes) -> bool:
        """Publish ``changes``; returns False (and owes a full sync) when a service failed."""
        full = self._owe_full_sync
        try:
            self._publish(changes, full)
        except (BusUnavailable, OperationalError, OSError) as error:
            log.error("catalog not published, will resync when reachable: %s", error)
            self._owe_full_sync = True
            return False
        self._owe_full_sync = False
        return True

    def _publish(self, changes: Changes, full: bool) -> None:
        nodes = sorted(self._state.nodes)
        slices_changed = (
            full or changes.added_images or changes.removed_images or (changes.touched_images)
        )
        for node in changes.left_nodes:
            self._catalog.delete_slice(node)
        rewrite = nodes if slices_changed else sorted(changes.joined_nodes)
        if rewrite:
            node_slice = self._slice_images()
            for node in rewrite:
                self.revision = self._catalog.put_slice(NodeSlice(node, node_slice))
        self._write_entries(changes, full, len(nodes))
        self._send_tasks(changes, nodes, full)
        if changes or full:
            event = CatalogChange(
                added=tuple(sorted(changes.added_images)),
                removed=tuple(sorted(changes.removed_images)),
                nodes=tuple(nodes),
                revision=self.revision,
            )
            self._bus.publish(CATALOG_EVENTS, event.to_json())

    def _slice_images(self) -> tuple[SliceImage, ...]:
        state = self._state
        return tuple(SliceImage(image, state.pull_secrets(image)) for image in state.images())

    def _write_entries(self, changes: Changes, full: bool, node_count: int) -> None:
        state = self._state
        for image in changes.removed_images:
            self._catalog.delete_entry(image)
        touched = set(state.images()) if full else changes.touched_images | changes.added_images
        for image in sorted(touched - changes.removed_images):
            workloads = tuple(sorted(state.users.get(image, ())))
            entry = CatalogEntry(image, workloads, state.pull_secrets(image), node_count)
            self._catalog.put_entry(entry)

    def _send_tasks(self, changes: Changes, nodes: list[str], full: bool) -> None:
        new_images = sorted(changes.added_images)
        with self._app.producer_or_acquire() as producer:
            for node in nodes:
                queue = queue_for_node(node)
                if full or node in changes.joined_nodes or len(new_images) > MAX_SINGLE_PULLS:
                    kwargs = {"node": node, "revision": self.revision}
                    self._app.send_task(REWARM_NODE, kwargs=kwargs, queue=queue, producer=producer)
                    continue
                for image in new_images:
                    kwargs = {"node": node, "image": image}
                    self._app.send_task(PULL_IMAGE, kwargs=kwargs, queue=queue, producer=producer)
