"""Turning catalog changes into KV writes, Celery tasks and NATS events.

Only new (node, image) pairs become work. Per node and batch: a few new images become
``pull_image`` tasks, more become one ``rewarm_node`` (the node diffs its slice against its
runtime), and a node that joins gets one ``rewarm_node`` for its whole slice. Each class of
equivalent nodes has one slice, stored under its content hash; a node's pointer to it is
written only when the hash moved, and always before any task is sent, so a node that reads its
slice finds what the task was sent for. A slice no pointer names is deleted. A node that
leaves loses its pointer and its queue.

Images a wave holds back (:mod:`watcher.waves`) are left out of every target node's slice but
their canaries', and named under its ``held`` instead.

When NATS or the broker fails mid-flush, the dispatcher owes a full sync and does it on the
next flush: every key rewritten, stale keys deleted, every node re-warmed. Re-warms only pull
what is missing, so owing too much is cheap and owing too little is impossible. A replica that
becomes leader starts with a full sync too: it cannot know what the previous leader sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import IntEnum

from celery import Celery
from kombu.exceptions import OperationalError

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import IMAGE_PREFIX, CatalogStore, image_key, slice_hash
from tasks.models import CatalogChange, CatalogEntry, SlicePointer
from tasks.names import (
    CATALOG_BUCKET,
    CATALOG_EVENTS,
    INVALID_IMAGE_EVENTS,
    PULL_IMAGE,
    REWARM_NODE,
)
from tasks.routing import queue_for_node

from . import metrics
from .catalog import EXPLICIT_USER, CatalogState, Changes
from .slices import SliceIndex
from .waves import Waves

log = logging.getLogger(__name__)

MAX_SINGLE_PULLS = 3  # more new images than this for one node: send one re-warm instead
ENTRY_WORKLOADS = 50  # users listed in a catalog entry; workload_count has them all


class Sync(IntEnum):
    INCREMENTAL = 0  # publish what changed
    REWRITE = 1  # rewrite every key (periodic resync: heals a NATS that lost its data)
    FULL = 2  # rewrite every key and re-warm every node (start, failover, after a failure)


class Dispatcher:
    def __init__(
        self,
        app: Celery,
        bus: NatsBus,
        state: CatalogState,
        digest_of: Callable[[str], str | None] = lambda image: None,
        waves: Waves | None = None,
    ) -> None:
        self._app = app
        self._bus = bus
        self._catalog = CatalogStore(bus)
        self._state = state
        self._digest_of = digest_of
        self._index = SliceIndex(state, digest_of)
        self._waves = waves or Waves(bus, state, 0)
        self._written: dict[str, int] = {}  # node -> its slice's image mask as last written
        self._held: dict[str, int] = {}  # node -> the mask of its images a wave holds back
        self._first = True  # no publish yet: the images of the first are no news (waves)
        self._pointers: dict[str, str] = {}  # node -> the hash of its class slice as written
        self._stored: set[str] = set()  # class slices written and not yet collected
        self._owed = Sync.FULL
        self.revision = 0

    @property
    def owes(self) -> bool:
        """Whether the next flush must publish even without changes."""
        return self._owed is not Sync.INCREMENTAL

    def owe(self, sync: Sync) -> None:
        """Make the next flush at least a ``sync``."""
        self._owed = max(self._owed, sync)

    def check_waves(self) -> set[str]:
        """The images a canary now holds: owed as retargeted, every target node gets them."""
        return self._waves.check(self._pointers.get)

    def flush(self, changes: Changes) -> bool:
        """Publish ``changes``; returns False (and owes a full sync) when a service failed."""
        sync, self._owed = self._owed, Sync.INCREMENTAL
        try:
            self._publish(changes, sync)
        except (BusUnavailable, OperationalError, OSError) as error:
            log.error("catalog not published, will resync when reachable: %s", error)
            metrics.PUBLISH_FAILURES.inc()
            self._owed = Sync.FULL
            return False
        return True

    def _publish(self, changes: Changes, sync: Sync) -> None:
        rewrite = sync is not Sync.INCREMENTAL
        recount = self._images_of(changes.left_nodes)  # their target_nodes fell
        affected = self._index.update(changes, rebuild=rewrite)
        for node in sorted(changes.left_nodes - set(self._state.nodes)):
            self._forget_node(node)
        if rewrite:
            self._delete_stale_keys()
        holds = self._waves.plan(
            changes,
            self._index,
            self._pointers.get,
            self._digest_of,
            first=self._first,
            reload=sync is Sync.FULL,
        )
        affected |= self._index.nodes_with(self._index.mask_of(holds))
        moved = self._index.mask_of(changes.moved_images)
        changed = self._index.mask_of(changes.retargeted_images | changes.added_images) | moved
        new_images = self._write_slices(affected, rewrite, changed, moved)
        self._collect_slices(rewrite)
        recount |= self._images_of(changes.joined_nodes | changes.changed_nodes)
        self._write_entries(changes, rewrite, recount)
        joined = set(self._state.nodes) if sync is Sync.FULL else changes.joined_nodes
        sent = self._send_tasks(new_images, joined & set(self._state.nodes))
        self._first = False
        if sync or changes.added_images or changes.removed_images or joined or changes.left_nodes:
            log.info(
                "catalog revision %d: %d images (+%d -%d), %d nodes (+%d -%d), %d tasks sent",
                self.revision,
                len(self._state.images),
                len(changes.added_images),
                len(changes.removed_images),
                len(self._state.nodes),
                len(joined),
                len(changes.left_nodes),
                sent,
            )
        self._publish_events(changes, sorted(new_images))
        metrics.CATALOG_IMAGES.set(len(self._state.images))
        metrics.NODES.set(len(self._state.nodes))
        metrics.NODE_CLASSES.set(self._index.class_count)

    def _write_slices(
        self, affected: set[str], rewrite: bool, changed: int, moved: int = 0
    ) -> dict[str, list[str]]:
        """Write the class slices and pointers that changed; return each node's images new
        to it, or whose tag moved to another digest (``moved``).

        Nodes of one class share one mask: each distinct slice is serialized, hashed and
        stored once, before any pointer names it, and each (old, new) pair of masks is diffed
        once. A pointer is written only when its node's slice hash moved.
        """
        new_images: dict[str, list[str]] = {}
        hashes: dict[tuple[int, int], str] = {}
        diffs: dict[tuple[int, int], list[str]] = {}
        if rewrite:
            self._stored.clear()  # NATS may have lost them: store every slice named again
        waved = self._index.mask_of(self._waves.held())
        for node in sorted(affected):
            members, held = self._members(node, waved)
            old = self._written.get(node, 0)
            if rewrite or members != old or held != self._held.get(node, 0) or members & changed:
                if (members, held) not in hashes:
                    payload = self._index.slice_json(members, held)
                    hashes[(members, held)] = self._store_slice(payload)
                digest = hashes[(members, held)]
                if rewrite or self._pointers.get(node) != digest:
                    pointer = SlicePointer(node, digest, members.bit_count())
                    self.revision = self._catalog.put_pointer(pointer)
                    self._pointers[node] = digest
                    metrics.SLICE_WRITES.inc()
            self._written[node], self._held[node] = members, held
            if members & (~old | moved):
                if (old, members) not in diffs:
                    diffs[(old, members)] = self._index.images(members & (~old | moved))
                new_images[node] = diffs[(old, members)]
        return new_images

    def _members(self, node: str, waved: int) -> tuple[int, int]:
        """The masks of the images ``node`` gets and of those a wave holds back from it: all
        of its class's, but the ``waved`` images it is no canary of."""
        members = self._index.members(node)
        if not waved & members:
            return members, 0
        held = members & waved & ~self._index.mask_of(self._waves.canary_images(node))
        return members & ~held, held

    def _store_slice(self, payload: bytes) -> str:
        digest = slice_hash(payload)
        if digest not in self._stored:
            self._catalog.put_class_slice(payload)
            self._stored.add(digest)
        return digest

    def _collect_slices(self, rewrite: bool) -> None:
        """Delete the class slices no pointer names any more (a rewrite also finds those a
        previous leader left behind)."""
        named = set(self._pointers.values())
        stored = set(self._catalog.class_slices()) if rewrite else self._stored
        for digest in sorted(stored - named):
            self._catalog.delete_class_slice(digest)
        self._stored &= named

    def _images_of(self, nodes: set[str]) -> set[str]:
        """Images in the last written slices of ``nodes``."""
        mask = 0
        for node in nodes:
            mask |= self._written.get(node, 0)
        return set(self._index.images(mask))

    def _write_entries(self, changes: Changes, rewrite: bool, recount: set[str]) -> None:
        state = self._state
        for image in sorted(changes.removed_images - set(state.images)):
            self._catalog.delete_entry(image)
        touched = set(state.images) if rewrite else changes.touched_images | changes.added_images
        touched |= changes.retargeted_images | changes.moved_images | recount
        for image in sorted(touched & set(state.images)):
            self.revision = self._catalog.put_entry(self._entry(image))

    def _entry(self, image: str) -> CatalogEntry:
        use = self._state.images[image]
        users = sorted(use.users)
        if use.explicit_rule is not None:
            users.insert(0, EXPLICIT_USER)
        return CatalogEntry(
            image=image,
            workloads=tuple(users[:ENTRY_WORKLOADS]),
            pull_secrets=self._state.catalog_secrets(image),
            target_nodes=self._index.target_nodes(image),
            target=tuple(sorted(rule.describe() for rule in use.targets())),
            workload_count=len(users),
            digest=self._digest_of(image),
        )

    def _send_tasks(self, new_images: dict[str, list[str]], joined: set[str]) -> int:
        """Send each node its pulls (or one re-warm); returns how many tasks were sent."""
        sent = 0
        if not new_images and not joined:
            return sent
        with self._app.producer_or_acquire() as producer:
            for node in sorted(set(new_images) | joined):
                queue = queue_for_node(node)
                images = new_images.get(node, [])
                if node in joined or len(images) > MAX_SINGLE_PULLS:
                    kwargs: dict[str, object] = {"node": node, "revision": self.revision}
                    self._app.send_task(REWARM_NODE, kwargs=kwargs, queue=queue, producer=producer)
                    metrics.TASKS_SENT.labels(REWARM_NODE).inc()
                    sent += 1
                    continue
                for image in images:  # the node reads the pull secrets from its slice
                    kwargs = {"node": node, "image": image}
                    self._app.send_task(PULL_IMAGE, kwargs=kwargs, queue=queue, producer=producer)
                    metrics.TASKS_SENT.labels(PULL_IMAGE).inc()
                    sent += 1
        return sent

    def _publish_events(self, changes: Changes, nodes: list[str]) -> None:
        for invalid in changes.invalid:
            metrics.INVALID_IMAGES.inc()
            self._bus.publish(INVALID_IMAGE_EVENTS, invalid.to_json())
        if changes.added_images or changes.removed_images or nodes:
            event = CatalogChange(
                added=tuple(sorted(changes.added_images)),
                removed=tuple(sorted(changes.removed_images)),
                nodes=tuple(nodes),
                revision=self.revision,
            )
            self._bus.publish(CATALOG_EVENTS, event.to_json())

    def _forget_node(self, node: str) -> None:
        """A node left: its slice key and its queue go (tasks for it could never run)."""
        self._written.pop(node, None)
        self._held.pop(node, None)
        self._pointers.pop(node, None)
        self._catalog.delete_slice(node)
        queue = self._app.amqp.queues[queue_for_node(node)]
        with self._app.connection_for_write() as connection:
            bound = queue(connection.default_channel)
            bound.declare()  # the channel deletes only queues it knows (kombu's Redis transport)
            bound.delete()
        log.info("node %s left: slice and queue %s deleted", node, queue.name)

    def _delete_stale_keys(self) -> None:
        """Keys of nodes and images this state does not know: left while nobody led."""
        for node in self._catalog.nodes():
            if node not in self._state.nodes:
                self._forget_node(node)
        wanted = {image_key(image) for image in self._state.images}
        for key in self._bus.kv_keys(CATALOG_BUCKET, IMAGE_PREFIX):
            if key not in wanted:
                self._bus.kv_delete(CATALOG_BUCKET, key)
