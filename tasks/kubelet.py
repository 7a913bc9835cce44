"""What the kubelets said about image pulls, as counted by the watcher: the records in NATS.

The kubelet records every image decision as a ``Pulled`` Event: "already present on machine"
(a hit: the image was warm) or "Successfully pulled image ... (Ys including waiting)" (a miss:
the pod waited). The leader counts them (watcher/kubelet_tally.py) and keeps two kinds of keys
in the ``warm-kubelet`` bucket:

* ``nodes.<node>`` holds a node's :class:`KubeletCounts`: ``celery -A tasks warm-status
  --json`` shows them as each node's ``"kubelet"``;
* ``summary`` holds a :class:`KubeletSummary`: counts per image and per node class, what pods
  waited and what warming saved, and the images not in the catalog, counted apart.

Both are compact (counts as JSON arrays) and written only when they change, as the status
records are: a quiet cluster writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .bus import NatsBus
from .names import KUBELET_BUCKET
from .routing import check_node_name

NODE_PREFIX = "nodes."
SUMMARY_KEY = "summary"
OTHER = "(other)"  # the images or classes past a bound, counted together


@dataclass
class KubeletCounts:
    """Pulls the kubelet reported: hits, misses, and seconds pods waited on the misses.

    ``seconds_saved`` estimates what the hits spared pods: each hit counts the image's pull
    time as the workers measured it (or, before any worker pulled it, as the kubelet did).
    """

    hits: int = 0
    misses: int = 0
    seconds_waited: float = 0.0
    seconds_saved: float = 0.0

    @property
    def ratio(self) -> float | None:
        """The warm-hit ratio, None before any pull was reported."""
        total = self.hits + self.misses
        return self.hits / total if total else None

    def add(self, other: KubeletCounts) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.seconds_waited += other.seconds_waited
        self.seconds_saved += other.seconds_saved

    def node_json(self) -> dict[str, Any]:
        """A node's ``"kubelet"`` in ``warm-status --json``."""
        return {"hits": self.hits, "misses": self.misses, "seconds_waited": _s(self.seconds_waited)}

    def to_list(self) -> list[float]:
        return [self.hits, self.misses, _s(self.seconds_waited), _s(self.seconds_saved)]

    @classmethod
    def from_list(cls, data: list[Any]) -> KubeletCounts:
        values = [*data, 0, 0, 0, 0][:4]
        return cls(int(values[0]), int(values[1]), float(values[2]), float(values[3]))

    def to_json(self) -> bytes:
        return _dump(self.node_json())

    @classmethod
    def from_json(cls, raw: bytes) -> KubeletCounts:
        data = json.loads(raw)
        return cls(int(data["hits"]), int(data["misses"]), float(data["seconds_waited"]))


@dataclass
class KubeletSummary:
    """The leader's counts: per image of the catalog, per node class, and apart, per image not
    in the catalog (what the selection misses). ``watermark`` is the last occurrence counted,
    so a new leader does not count again the Events the API still holds."""

    images: dict[str, KubeletCounts] = field(default_factory=dict)
    classes: dict[str, KubeletCounts] = field(default_factory=dict)
    not_in_catalog: dict[str, KubeletCounts] = field(default_factory=dict)
    pull_seconds: dict[str, float] = field(default_factory=dict)  # image -> measured pull time
    watermark: float = 0.0

    @property
    def totals(self) -> KubeletCounts:
        return _total(self.images.values())

    @property
    def not_in_catalog_totals(self) -> KubeletCounts:
        return _total(self.not_in_catalog.values())

    def top_lost(self, limit: int = 10) -> list[tuple[str, KubeletCounts]]:
        """The images by seconds pods still waited on cold pulls, most first."""
        lost = [(image, counts) for image, counts in self.images.items() if counts.misses]
        lost.sort(key=lambda item: (-item[1].seconds_waited, item[0]))
        return lost[:limit]

    def report(self, limit: int = 10) -> dict[str, Any]:
        """The ``"kubelet"`` of ``warm-status --json``."""
        totals, apart = self.totals, self.not_in_catalog_totals
        return {
            **totals.node_json(),
            "seconds_saved": _s(totals.seconds_saved),
            "ratio": None if totals.ratio is None else round(totals.ratio, 4),
            "top_lost": [
                {"image": image, **counts.node_json()} for image, counts in self.top_lost(limit)
            ],
            "classes": {name: c.node_json() for name, c in sorted(self.classes.items())},
            "not_in_catalog": {
                **apart.node_json(),
                "top_lost": [
                    {"image": image, **counts.node_json()}
                    for image, counts in sorted(
                        self.not_in_catalog.items(), key=lambda i: (-i[1].seconds_waited, i[0])
                    )[:limit]
                ],
            },
        }

    def to_json(self) -> bytes:
        return _dump(
            {
                "images": {image: counts.to_list() for image, counts in self.images.items()},
                "classes": {name: counts.to_list() for name, counts in self.classes.items()},
                "not_in_catalog": {i: c.to_list() for i, c in self.not_in_catalog.items()},
                "pull_seconds": {image: _s(s) for image, s in self.pull_seconds.items()},
                "watermark": self.watermark,  # unrounded: it compares with Event times
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> KubeletSummary:
        data = json.loads(raw)

        def counts(key: str) -> dict[str, KubeletCounts]:
            return {k: KubeletCounts.from_list(v) for k, v in (data.get(key) or {}).items()}

        return cls(
            images=counts("images"),
            classes=counts("classes"),
            not_in_catalog=counts("not_in_catalog"),
            pull_seconds={k: float(v) for k, v in (data.get("pull_seconds") or {}).items()},
            watermark=float(data.get("watermark") or 0.0),
        )


class KubeletStore:
    def __init__(self, bus: NatsBus, bucket: str = KUBELET_BUCKET) -> None:
        self._bus = bus
        self._bucket = bucket

    def get_summary(self) -> KubeletSummary | None:
        found = self._bus.kv_get(self._bucket, SUMMARY_KEY)
        return KubeletSummary.from_json(found[0]) if found and found[0] else None

    def put_summary(self, payload: bytes) -> None:
        self._bus.kv_put(self._bucket, SUMMARY_KEY, payload)

    def get_node(self, node: str) -> KubeletCounts:
        """The node's counts; zeros when the kubelet reported nothing (or not yet)."""
        found = self._bus.kv_get(self._bucket, NODE_PREFIX + check_node_name(node))
        return KubeletCounts.from_json(found[0]) if found and found[0] else KubeletCounts()

    def put_node(self, node: str, payload: bytes) -> None:
        self._bus.kv_put(self._bucket, NODE_PREFIX + check_node_name(node), payload)

    def delete_node(self, node: str) -> None:
        self._bus.kv_delete(self._bucket, NODE_PREFIX + check_node_name(node))

    def nodes(self) -> dict[str, KubeletCounts]:
        return {
            key[len(NODE_PREFIX) :]: self.get_node(key[len(NODE_PREFIX) :])
            for key in self._bus.kv_keys(self._bucket, NODE_PREFIX)
        }


def _total(counts: Any) -> KubeletCounts:
    total = KubeletCounts()
    for item in counts:
        total.add(item)
    return total


def _s(seconds: float) -> float:
    return round(seconds, 3)


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
