"""Per-node status in NATS key-value: what each node holds, lacks and failed to pull.

Each node worker owns its key (``<node>`` in the status bucket) and is its only writer, so
updates need no coordination across nodes; within a worker a lock orders them.

A re-warm refreshes the whole record: the images expected, the ones found present (recorded as
such, since nothing was pulled for them), and each pull's outcome as it finishes. So after a
re-warm the record says what the runtime holds, not what was pulled once and since removed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .bus import NatsBus
from .models import Outcome, PullResult
from .names import STATUS_BUCKET


@dataclass
class ImageStatus:
    outcome: str
    reason: str = ""
    at: float = 0.0
    seconds: float = 0.0
    trigger: str = ""  # what asked for the pull (tasks.models.Trigger); "" when none did


@dataclass
class NodeStatus:
    node: str
    images: dict[str, ImageStatus] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)
    last_rewarm_at: float | None = None
    last_rewarm_revision: int | None = None

    @property
    def warm(self) -> list[str]:
        good = (Outcome.PULLED, Outcome.PRESENT)
        return [image for image in self.expected if self._outcome(image) in good]

    @property
    def missing(self) -> list[str]:
        return [image for image in self.expected if image not in self.warm]

    @property
    def failed(self) -> dict[str, str]:
        return self._with_outcome(Outcome.FAILED)

    @property
    def retrying(self) -> dict[str, str]:
        return self._with_outcome(Outcome.RETRYING)

    def _with_outcome(self, outcome: Outcome) -> dict[str, str]:
        return {
            image: status.reason
            for image, status in self.images.items()
            if status.outcome == outcome and image in self.expected
        }

    def _outcome(self, image: str) -> str | None:
        status = self.images.get(image)
        return status.outcome if status else None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeStatus:
        data: dict[str, Any] = json.loads(raw)
        images = {ref: ImageStatus(**value) for ref, value in data.pop("images", {}).items()}
        return cls(images=images, **data)

    def summary(self) -> dict[str, Any]:
        """The JSON of ``celery -A tasks warm-status --json``: counts, and lists to act on."""
        return {
            "node": self.node,
            "warm": len(self.warm),
            "expected": len(self.expected),
            "warm_images": self.warm,
            "missing": self.missing,
            "failed": self.failed,
            "retrying": self.retrying,
            "last_rewarm_at": self.last_rewarm_at,
            "last_rewarm_revision": self.last_rewarm_revision,
        }


class StatusStore:
    def __init__(self, bus: NatsBus, bucket: str = STATUS_BUCKET) -> None:
        self._bus = bus
        self._bucket = bucket
        self._lock = threading.Lock()

    def get(self, node: str) -> NodeStatus:
        found = self._bus.kv_get(self._bucket, node)
        return NodeStatus.from_json(found[0]) if found and found[0] else NodeStatus(node=node)

    def nodes(self) -> list[str]:
        return self._bus.kv_keys(self._bucket)

    def record_many(self, node: str, results: list[PullResult]) -> None:
        """One read and one write for many results: a node's status holds every image it
        should have, so writing it once per pull would make a re-warm's cost quadratic."""
        if not results:
            return
        with self._lock:
            status = self.get(node)
            for result in results:
                status.images[result.image] = ImageStatus(
                    outcome=result.outcome.value,
                    reason=result.reason,
                    at=result.at,
                    seconds=result.seconds,
                    trigger=result.trigger.value,
                )
            self._bus.kv_put(self._bucket, node, status.to_json())

    def record_rewarm(
        self, node: str, expected: list[str], revision: int, present: list[str] | None = None
    ) -> None:
        """A re-warm's diff: what the node should hold and what its runtime already holds."""
        with self._lock:
            status = self.get(node)
            status.expected = sorted(expected)
            now = time.time()
            for image in present or ():
                status.images[image] = ImageStatus(outcome=Outcome.PRESENT.value, at=now)
            status.last_rewarm_at = now
            status.last_rewarm_revision = revision
            self._bus.kv_put(self._bucket, node, status.to_json())
