"""The catalog in NATS JetStream key-value: what belongs on which node.

The watcher is the only writer. Two kinds of keys live in one bucket:

* ``nodes.<node>`` holds a :class:`NodeSlice`, the images that node should hold. A node worker
  reads exactly one key to re-warm, however large the catalog is.
* ``images.<hash>`` holds a :class:`CatalogEntry` per image, for people (``celery -A tasks
  catalog``) and for dashboards.

The bucket's revision grows with every write, so a re-warm message carries the revision it was
sent for and stays a few dozen bytes, never the image list.
"""

from __future__ import annotations

import hashlib

from .bus import NatsBus
from .models import CatalogEntry, NodeSlice
from .names import CATALOG_BUCKET
from .routing import check_node_name

NODE_PREFIX = "nodes."
IMAGE_PREFIX = "images."


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

    def put_slice(self, node_slice: NodeSlice) -> int:
        key = NODE_PREFIX + check_node_name(node_slice.node)
        return self._bus.kv_put(self._bucket, key, node_slice.to_json())

    def get_slice(self, node: str) -> tuple[NodeSlice, int]:
        found = self._bus.kv_get(self._bucket, NODE_PREFIX + check_node_name(node))
        if found is None or not found[0]:
            raise UnknownNode(f"node {node!r} is not in the catalog")
        raw, revision = found
        return NodeSlice.from_json(raw), revision

    def delete_slice(self, node: str) -> None:
        self._bus.kv_delete(self._bucket, NODE_PREFIX + check_node_name(node))

    def nodes(self) -> list[str]:
        return [key[len(NODE_PREFIX) :] for key in self._bus.kv_keys(self._bucket, NODE_PREFIX)]

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


def image_key(image: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; a reference has ':' and '@', so it is hashed.
    return IMAGE_PREFIX + hashlib.sha256(image.encode()).hexdigest()[:40]
