"""Per-node status in NATS key-value: what each node lacks and why, against the slice it answers.

Each node worker owns its key (``<node>`` in the status bucket) and is its only writer, so
updates need no coordination across nodes; within a worker a lock orders them. The record is
read back before each update (a few hundred bytes), so one that NATS lost is written again by
the next re-warm.

The record stays small and written only when it changes, because 5,000 nodes re-warm every
interval: it counts what is warm and names only the images of the node's slice that are not
(missing, failed or retrying, with the reason and the attempt), and the slice revision it
answers. An image that leaves the slice leaves the record at the next re-warm, so the record
does not grow with every tag a node ever saw; a re-warm that finds everything as recorded
writes nothing.

A reader (``celery -A tasks warm-status``) measures the record against the node's slice now:
an image of the slice the record does not name is warm, unless the node never reported.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .bus import NatsBus
from .models import Outcome, PullResult
from .names import STATUS_BUCKET

WARM = (Outcome.PULLED.value, Outcome.PRESENT.value)
MISSING = "missing"  # in the slice, absent from the runtime, no pull finished yet


@dataclass(frozen=True)
class ImageStatus:
    """Why one image of the slice is not warm."""

    outcome: str
    reason: str = ""
    at: float = 0.0
    attempt: int = 0
    trigger: str = ""  # what asked for the attempt (tasks.models.Trigger); "" when none did


@dataclass
class NodeStatus:
    node: str
    # The images of the slice that are not warm; an image the record does not name is warm.
    images: dict[str, ImageStatus] = field(default_factory=dict)
    expected_count: int = 0  # images in the slice answered
    warm_count: int = 0  # of which the runtime held or pulled
    last_rewarm_at: float | None = None  # the last re-warm that changed the record
    last_rewarm_revision: int | None = None  # the revision of the slice it answers
    slice: str = ""  # that slice's content hash: a pointer rewritten unchanged is no news
    # The slice a reader measures against; not stored (the catalog holds it).
    expected: list[str] = field(default_factory=list, compare=False)
    # Images a wave holds back from the node, with where the wave stands; not stored either.
    held: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def reported(self) -> bool:
        return self.last_rewarm_revision is not None or bool(self.images)

    @property
    def warm(self) -> list[str]:
        if not self.reported:
            return []
        return [image for image in self.expected if image not in self.images]

    @property
    def missing(self) -> list[str]:
        warm = set(self.warm)
        return [image for image in self.expected if image not in warm]

    @property
    def failed(self) -> dict[str, str]:
        return self._with_outcome(Outcome.FAILED)

    @property
    def retrying(self) -> dict[str, str]:
        return self._with_outcome(Outcome.RETRYING)

    def _with_outcome(self, outcome: Outcome) -> dict[str, str]:
        expected = set(self.expected)
        return {
            image: status.reason
            for image, status in self.images.items()
            if status.outcome == outcome and image in expected
        }

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["expected"], data["held"]
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeStatus:
        """A record, also one written by an older worker (which named every image, warm or
        not, and listed the slice): what this model does not hold is left out."""
        data: dict[str, Any] = json.loads(raw)
        images = {
            ref: ImageStatus(**_known(ImageStatus, value))
            for ref, value in data.pop("images", {}).items()
            if value.get("outcome") not in WARM
        }
        data.pop("expected", None)
        data.pop("held", None)
        return cls(images=images, **_known(cls, data))

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
            "held": self.held,
            "last_rewarm_at": self.last_rewarm_at,
            "last_rewarm_revision": self.last_rewarm_revision,
        }


class StatusStore:
    def __init__(self, bus: NatsBus, bucket: str = STATUS_BUCKET) -> None:
        self._bus = bus
        self._bucket = bucket
        self._lock = threading.Lock()
        self._expected: dict[str, frozenset[str]] = {}  # node -> the slice of its last re-warm

    def get(self, node: str) -> NodeStatus:
        found = self._bus.kv_get(self._bucket, node)
        return NodeStatus.from_json(found[0]) if found and found[0] else NodeStatus(node=node)

    def nodes(self) -> list[str]:
        return self._bus.kv_keys(self._bucket)

    def record_many(self, node: str, results: list[PullResult]) -> None:
        """Pull results into the record, written once for all of them, and only if they
        change it (a pull of an image already warm does not)."""
        if not results:
            return
        with self._lock:
            status = self.get(node)
            images, warm = dict(status.images), status.warm_count
            expected = self._expected.get(node)
            for result in results:
                before = images.get(result.image)
                if result.outcome.value in WARM:
                    if images.pop(result.image, None) is not None:
                        warm += 1
                    continue
                if before is None and expected is not None and result.image in expected:
                    warm -= 1  # an image of the slice the record did not name counted as warm
                # An image outside the slice re-warmed is new to the node (the watcher sent
                # it): named now, it leaves at the next re-warm if it left the slice.
                images[result.image] = _merged(before, _image_status(result))
            self._write(status, replace(status, images=images, warm_count=max(0, warm)))

    def record_rewarm(
        self,
        node: str,
        expected: list[str],
        revision: int,
        present: list[str] | None = None,
        slice_hash: str = "",
        pulling: list[str] | None = None,
    ) -> None:
        """A re-warm's diff: the slice answered (at ``revision``, with ``slice_hash``), what
        the runtime holds, and what the re-warm pulls now.

        Images that left the slice leave the record; images present are warm; the others
        keep what the record knew of them (a failure and its reason) or are missing. An image
        that failed for good and is ``pulling`` again is missing until that pull ends: the
        failure was of an earlier catalog entry (another digest), or the worker restarted,
        and a reader of the record (a wave's canary, the startup gate) must not take it for
        this attempt's. The watcher's periodic resync rewrites every pointer unchanged: a
        revision that moved over the same content keeps the record as it was.
        """
        held, again = set(present or ()), set(pulling or ())
        with self._lock:
            status = self.get(node)
            images = {
                image: _known_before(status.images.get(image), image in again)
                for image in expected
                if image not in held
            }
            changed = replace(
                status,
                images=images,
                expected_count=len(expected),
                warm_count=len(expected) - len(images),
                last_rewarm_revision=revision,
                slice=slice_hash,
            )
            if slice_hash and slice_hash == status.slice:
                changed.last_rewarm_revision = status.last_rewarm_revision
            self._expected[node] = frozenset(expected)
            if changed != status:
                self._write(status, replace(changed, last_rewarm_at=time.time()))

    def _write(self, before: NodeStatus, status: NodeStatus) -> None:
        if status != before:
            self._bus.kv_put(self._bucket, status.node, status.to_json())


def _known(model: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {item.name for item in fields(model)}
    return {key: value for key, value in data.items() if key in names}


def _known_before(before: ImageStatus | None, pulling: bool) -> ImageStatus:
    if before is None or (pulling and before.outcome == Outcome.FAILED.value):
        return ImageStatus(outcome=MISSING)
    return before


def _image_status(result: PullResult) -> ImageStatus:
    at = round(result.at, 3)
    return ImageStatus(result.outcome.value, result.reason, at, result.attempt, result.trigger)


def _merged(before: ImageStatus | None, after: ImageStatus) -> ImageStatus:
    """The same attempt ending the same way again is no news: the record keeps the first time
    it was seen, so a re-warm whose pull fails as before does not rewrite it."""
    if before is not None and replace(after, at=before.at) == before:
        return before
    return after
