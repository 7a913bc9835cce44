"""The messages and records that cross component boundaries, as plain JSON-able dataclasses.

Everything here travels as JSON (Celery's serializer is restricted to JSON, and NATS payloads
are JSON): no pickles, and never a credential. A pull secret is named (namespace/name), and the
node worker reads it from the API at pull time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PULLED = "pulled"  # the runtime pulled it now
    PRESENT = "present"  # already on the node; nothing was pulled
    FAILED = "failed"  # permanent failure: not retried until the catalog changes
    RETRYING = "retrying"  # transient failure: Celery retries with backoff
    SKIPPED = "skipped"  # deliberately not pulled (for example the disk budget)


class Trigger(StrEnum):
    """What asked for a pull: how an image came (back) to a node, for drills and operators."""

    START = "start"  # the worker's reconcile when it starts
    RECONNECT = "reconnect"  # the worker's reconcile when its broker connection came back
    REWARM = "rewarm"  # a re-warm task (periodic or `celery -A tasks rewarm`)
    TASK = "task"  # a pull task (the watcher's, or a retry)


@dataclass(frozen=True)
class SliceImage:
    """One image a node should hold, with the pull secrets (names only) that may unlock it."""

    image: str
    pull_secrets: tuple[str, ...] = ()
    # The manifest digest the tag pointed at when the catalog saw it. A node holding the tag
    # under another digest holds a moved tag, and pulls it again. Absent in older slices.
    digest: str | None = None

    def to_json(self) -> bytes:
        """This image as it appears inside a :class:`ClassSlice`, byte for byte."""
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SliceImage:
        # Every field the model has, so a field added to it needs no change here; JSON lists
        # become the tuples a frozen dataclass hashes.
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**values)


@dataclass(frozen=True)
class ClassSlice:
    """The images that belong on every node of one placement class, stored once per class
    under a key named by the hash of its content (``slices.<hash>``): nodes that agree on
    every label and taint a placement rule reads share one copy, however many they are."""

    images: tuple[SliceImage, ...] = ()
    # Images of the class that a wave holds back from these nodes (watcher/waves.py): names
    # only, for status readers; a node pulls none of them. Absent from the JSON when empty.
    held: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return self.join((image.to_json() for image in self.images), self.held)

    @staticmethod
    def join(images_json: Iterable[bytes], held: Iterable[str] = ()) -> bytes:
        """The slice's JSON from each image's own :meth:`SliceImage.to_json`: the watcher keeps
        those per image and joins them, instead of serializing 2,000 images per class."""
        names = sorted(held)
        tail = b',"held":' + json.dumps(names, separators=(",", ":")).encode() if names else b""
        return b'{"images":[' + b",".join(images_json) + b"]" + tail + b"}"

    @classmethod
    def from_json(cls, raw: bytes) -> ClassSlice:
        data = json.loads(raw)
        images = tuple(map(SliceImage.from_json, data["images"]))
        return cls(images, tuple(data.get("held", ())))


@dataclass(frozen=True)
class SlicePointer:
    """A node's key in the catalog (``nodes.<node>``): which class slice it holds. A few dozen
    bytes, so a node learns whether its slice changed without reading the slice."""

    node: str
    slice: str  # the content hash of its ClassSlice
    images: int = 0  # how many images that slice holds

    def to_json(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> SlicePointer:
        data = json.loads(raw)
        return cls(node=data["node"], slice=data["slice"], images=int(data.get("images", 0)))


@dataclass(frozen=True)
class NodeSlice:
    """The part of the catalog that belongs on one node: its pointer resolved."""

    node: str
    images: tuple[SliceImage, ...] = ()
    slice: str = ""  # the content hash of the class slice it resolves to
    held: tuple[str, ...] = ()  # images of its class a wave holds back from it (not to pull)


@dataclass(frozen=True)
class CatalogEntry:
    """One image in use: who uses it and on how many nodes it belongs."""

    image: str
    workloads: tuple[str, ...] = ()  # "namespace/Kind/name"
    pull_secrets: tuple[str, ...] = ()  # "namespace/name"
    target_nodes: int = 0
    # Where it may run, one rule per distinct placement of its users, e.g.
    # "kubernetes.io/arch=arm64; tolerates dedicated=gpu:NoSchedule"; "any node" when unrestricted.
    target: tuple[str, ...] = ()
    workload_count: int = 0  # workloads lists at most a sample; this counts them all
    # The manifest digest the leader resolved the tag to (watcher/digests.py); None while unknown.
    digest: str | None = None

    def to_json(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> CatalogEntry:
        data = json.loads(raw)
        return cls(
            image=data["image"],
            workloads=tuple(data.get("workloads", ())),
            pull_secrets=tuple(data.get("pull_secrets", ())),
            target_nodes=int(data.get("target_nodes", 0)),
            target=tuple(data.get("target", ())),
            workload_count=int(data.get("workload_count", 0)),
            digest=data.get("digest"),
        )


class WaveState(StrEnum):
    CANARY = "canary"  # on its canary nodes only, until one of them holds it
    STOPPED = "stopped"  # a canary failed for good: held back from the other nodes


@dataclass(frozen=True)
class Wave:
    """A new image, or a new digest of one, on its way to the fleet (watcher/waves.py): first
    to its canary nodes, then, once a canary holds it, to the rest. Stored by the leader under
    ``waves.<hash>`` in the catalog bucket while it lasts (canary or stopped); a wave that
    reached the fleet is deleted."""

    image: str
    digest: str | None  # None while the leader has not resolved it
    canaries: tuple[str, ...]
    state: WaveState = WaveState.CANARY
    started: float = 0.0  # seconds since the epoch
    node: str = ""  # stopped: the canary that failed
    reason: str = ""  # stopped: why it failed

    def describe(self) -> str:
        """One line for people: where the wave stands."""
        if self.state is WaveState.STOPPED:
            return f"wave stopped: canary {self.node} failed: {self.reason}"
        return f"wave waits for a canary: {', '.join(self.canaries) or 'no target node yet'}"

    def to_json(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> Wave:
        data = json.loads(raw)
        return cls(
            image=data["image"],
            digest=data.get("digest"),
            canaries=tuple(data.get("canaries", ())),
            state=WaveState(data.get("state", WaveState.CANARY)),
            started=float(data.get("started", 0.0)),
            node=data.get("node", ""),
            reason=data.get("reason", ""),
        )


@dataclass(frozen=True)
class InvalidImage:
    """Published when a workload names an image reference that breaks the grammar."""

    workload: str  # "namespace/Kind/name"
    reference: str
    reason: str

    def to_json(self) -> bytes:
        return _dump(asdict(self))


@dataclass(frozen=True)
class PullResult:
    """What a node worker reports after each pull attempt."""

    node: str
    image: str
    outcome: Outcome
    reason: str = ""
    seconds: float = 0.0
    size: int | None = None
    image_id: str | None = None
    attempt: int = 1
    at: float = field(default_factory=time.time)
    trigger: Trigger = Trigger.TASK
    # The digest its catalog entry named (the content asked for), so a wave tells a result
    # for its digest from a late one for the tag's previous digest.
    digest: str | None = None

    def to_json(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> PullResult:
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in json.loads(raw).items() if key in known}
        data["outcome"] = Outcome(data["outcome"])
        data["trigger"] = Trigger(data.get("trigger", Trigger.TASK))
        return cls(**data)


@dataclass(frozen=True)
class CatalogChange:
    """Published when images enter or leave the catalog."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    revision: int = 0

    def to_json(self) -> bytes:
        return _dump(asdict(self))


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
