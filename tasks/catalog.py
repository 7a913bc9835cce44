"""The catalog in NATS JetStream key-value: what belongs on which node.

The watcher is the only writer. Three kinds of keys live in one bucket:

* ``slices.<hash>`` holds a :class:`ClassSlice`: the images of one class of equivalent nodes,
  named by the hash of its content. 5,000 nodes in a few pools share a few slices, instead of
  holding 5,000 copies of a 170 KB list.
* ``nodes.<node>`` holds a :class:`SlicePointer` to the node's class slice. A node worker reads
  its pointer (a few dozen bytes) on every re-warm and the slice only when the hash is new to
  it: a slice never changes under its name, so a copy kept in memory is never stale.
* ``images.<hash>`` holds a :class:`CatalogEntry` per image, for people (``celery -A tasks
  catalog``) and for dashboards.
* ``waves.<hash>`` holds a :class:`Wave` per image on its way to the fleet (watcher/waves.py),
  for ``celery -A tasks warm-status`` and for a leader that takes over.

A slice is written before any pointer names it, and deleted by the watcher once no pointer
does; a reader that finds the slice gone read a pointer that has just moved, and reads again.

The bucket's revision grows with every write, so a re-warm message carries the revision it was
sent for and stays a few dozen bytes, never the image list.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .bus import NatsBus
from .models import CatalogEntry, ClassSlice, NodeSlice, SlicePointer, Wave
from .names import CATALOG_BUCKET
from .routing import check_node_name

NODE_PREFIX = "nodes."
SLICE_PREFIX = "slices."
IMAGE_PREFIX = "images."
WAVE_PREFIX = "waves."
# Class slices a reader keeps parsed: a worker needs one; a few more serve the CLI and a node
# whose pointer moves back and forth.
CACHED_SLICES = 8
# Pointer reads when the slice named vanishes in between (the watcher moved the pointer and
# collected the old slice): each retry reads a newer pointer, so two are already rare.
POINTER_RETRIES = 5


class UnknownNode(LookupError):
    """A node the catalog does not know (never seen by the watcher, or gone)."""


class UnknownImage(LookupError):
    """Images the catalog does not hold (no workload uses them, or a typo)."""

    def __init__(self, images: list[str]) -> None:
        super().__init__(f"not in the catalog: {', '.join(images)}")
        self.images = images


class CatalogStore:
    def __init__(self, bus: NatsBus, bucket: str = CATALOG_BUCKET) -> None:
        self._bus = bus
        self._bucket = bucket
        self._slices: OrderedDict[str, ClassSlice] = OrderedDict()
        self._lock = threading.Lock()

    def put_class_slice(self, payload: bytes) -> tuple[str, int]:
        """Store a :class:`ClassSlice`'s JSON under its content hash; returns (hash, revision)."""
        digest = slice_hash(payload)
        return digest, self._bus.kv_put(self._bucket, SLICE_PREFIX + digest, payload)

    def put_pointer(self, pointer: SlicePointer) -> int:
        key = NODE_PREFIX + check_node_name(pointer.node)
        return self._bus.kv_put(self._bucket, key, pointer.to_json())

    def put_slice(self, node_slice: NodeSlice) -> int:
        """A node's slice as a class of its own, then its pointer; returns the revision."""
        payload = ClassSlice(node_slice.images, node_slice.held).to_json()
        digest, _ = self.put_class_slice(payload)
        return self.put_pointer(SlicePointer(node_slice.node, digest, len(node_slice.images)))

    def get_pointer(self, node: str) -> tuple[SlicePointer, int]:
        found = self._bus.kv_get(self._bucket, NODE_PREFIX + check_node_name(node))
        if found is None or not found[0]:
            raise UnknownNode(f"node {node!r} is not in the catalog")
        try:
            return SlicePointer.from_json(found[0]), found[1]
        except KeyError as error:  # a whole slice, as watchers before class slices wrote
            raise UnknownNode(
                f"node {node!r}: an older watcher's slice, until rewritten"
            ) from error

    def get_slice(self, node: str) -> tuple[NodeSlice, int]:
        """The node's slice and its pointer's revision: one small read when the slice is
        already held, as it is on every re-warm after the first of a worker."""
        for _ in range(POINTER_RETRIES):
            pointer, revision = self.get_pointer(node)
            found = self._class_slice(pointer.slice)
            if found is not None:
                return NodeSlice(node, found.images, pointer.slice, found.held), revision
        raise UnknownNode(f"node {node!r}: its slice keeps moving; the watcher is rewriting it")

    def delete_slice(self, node: str) -> None:
        self._bus.kv_delete(self._bucket, NODE_PREFIX + check_node_name(node))

    def delete_class_slice(self, digest: str) -> None:
        self._bus.kv_delete(self._bucket, SLICE_PREFIX + digest)

    def nodes(self) -> list[str]:
        return [key[len(NODE_PREFIX) :] for key in self._bus.kv_keys(self._bucket, NODE_PREFIX)]

    def class_slices(self) -> list[str]:
        """The content hashes of the class slices stored."""
        return [key[len(SLICE_PREFIX) :] for key in self._bus.kv_keys(self._bucket, SLICE_PREFIX)]

    def put_entry(self, entry: CatalogEntry) -> int:
        return self._bus.kv_put(self._bucket, image_key(entry.image), entry.to_json())

    def delete_entry(self, image: str) -> None:
        self._bus.kv_delete(self._bucket, image_key(image))

    def get_entry(self, image: str) -> CatalogEntry | None:
        """The entry of ``image`` (a normalized reference), or None when not in the catalog."""
        found = self._bus.kv_get(self._bucket, image_key(image))
        return CatalogEntry.from_json(found[0]) if found and found[0] else None

    def entries(self) -> list[CatalogEntry]:
        entries = []
        for key in self._bus.kv_keys(self._bucket, IMAGE_PREFIX):
            found = self._bus.kv_get(self._bucket, key)
            if found is not None and found[0]:
                entries.append(CatalogEntry.from_json(found[0]))
        return sorted(entries, key=lambda entry: entry.image)

    def put_wave(self, wave: Wave) -> int:
        return self._bus.kv_put(self._bucket, wave_key(wave.image), wave.to_json())

    def delete_wave(self, image: str) -> None:
        self._bus.kv_delete(self._bucket, wave_key(image))

    def waves(self) -> dict[str, Wave]:
        """Every wave stored, by image."""
        waves = {}
        for key in self._bus.kv_keys(self._bucket, WAVE_PREFIX):
            found = self._bus.kv_get(self._bucket, key)
            if found is not None and found[0]:
                wave = Wave.from_json(found[0])
                waves[wave.image] = wave
        return waves

    def _class_slice(self, digest: str) -> ClassSlice | None:
        with self._lock:
            if digest in self._slices:
                self._slices.move_to_end(digest)
                return self._slices[digest]
        found = self._bus.kv_get(self._bucket, SLICE_PREFIX + digest)
        if found is None or not found[0]:
            return None
        parsed = ClassSlice.from_json(found[0])
        with self._lock:
            self._slices[digest] = parsed
            while len(self._slices) > CACHED_SLICES:
                self._slices.popitem(last=False)
        return parsed


def slice_hash(payload: bytes) -> str:
    """The name of a class slice: its content's hash, so equal slices are stored once."""
    return hashlib.sha256(payload).hexdigest()[:40]


def image_key(image: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; a reference has ':' and '@', so it is hashed.
    return IMAGE_PREFIX + _hashed(image)


def wave_key(image: str) -> str:
    return WAVE_PREFIX + _hashed(image)


def _hashed(image: str) -> str:
    return hashlib.sha256(image.encode()).hexdigest()[:40]
