"""An in-memory runtime and registry behind :class:`ImageRuntime`, for tests that need no socket.

httpx ships MockTransport so that code above the transport is tested without a network; this
is the same for the node worker: single-flight, the concurrency bound, the disk budget, failure
classification and status are the worker's own logic, and they can be checked in milliseconds
here, while the drivers themselves are tested against real containerd and dockerd.

The fake keeps the facts the design records about real runtimes where the worker's logic
depends on them: a pull resolves a tag through the registry at that moment (so a tag can move),
an image is known by its tags and by ``name@digest``, a moved tag leaves the old image holding
only its digest name, ImageStatus of a missing image is ``None``, and a runtime that is down
answers every call with :class:`RuntimeUnavailable`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.images import InvalidImageReference, parse_image

from .base import (
    Credentials,
    FailureKind,
    FilesystemUsage,
    PullFailed,
    RuntimeImage,
    RuntimeUnavailable,
)

MIB = 1024 * 1024


@dataclass
class HeldImage:
    """An image a simulated runtime holds; its tags and digests gather as pulls name them."""

    id: str
    size: int
    tags: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)

    def as_runtime_image(self) -> RuntimeImage:
        return RuntimeImage(
            self.id, tuple(sorted(self.tags)), tuple(sorted(self.digests)), self.size
        )


class FakeRegistry:
    """Repositories, tags and manifests, with failures to serve on demand."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}  # "registry/repository:tag" -> manifest digest
        self.manifests: dict[str, int] = {}  # "registry/repository@digest" -> image size
        self.credentials: dict[str, Credentials] = {}  # "registry/repository" -> required
        self._failures: dict[str, list[tuple[FailureKind, str]]] = {}  # by reference as pulled
        self._generation = itertools.count(1)

    def push(self, reference: str, size: int = MIB) -> str:
        """Publish ``reference`` (normalized) with new content; moves its tag. Returns the
        manifest digest."""
        image = parse_image(reference)
        digest = (
            "sha256:" + hashlib.sha256(f"{image}#{next(self._generation)}".encode()).hexdigest()
        )
        self.manifests[f"{image.name}@{digest}"] = size
        if image.tag:
            self.tags[f"{image.name}:{image.tag}"] = digest
        return digest

    def require(self, repository: str, credentials: Credentials) -> None:
        """Answer 'unauthorized' to pulls of ``repository`` without these credentials."""
        self.credentials[parse_image(repository).name] = credentials

    def fail(self, reference: str, kind: FailureKind, reason: str, times: int = 1) -> None:
        """Fail the next ``times`` pulls of ``reference`` (as the runtime is asked for it)."""
        self._failures.setdefault(reference, []).extend([(kind, reason)] * times)

    def resolve(self, reference: str, credentials: Credentials | None) -> tuple[str, str, int]:
        """``(name, digest, size)`` of what ``reference`` points to now, or PullFailed."""
        failures = self._failures.get(reference)
        if failures:
            raise PullFailed(reference, *failures.pop(0))
        try:
            image = parse_image(reference)
        except InvalidImageReference as error:
            raise PullFailed(reference, FailureKind.PERMANENT, str(error)) from None
        required = self.credentials.get(image.name)
        if required is not None and credentials != required:
            raise PullFailed(reference, FailureKind.PERMANENT, "401 unauthorized")
        digest = image.digest or self.tags.get(f"{image.name}:{image.tag}")
        size = self.manifests.get(f"{image.name}@{digest}") if digest else None
        if digest is None or size is None:
            raise PullFailed(reference, FailureKind.PERMANENT, "manifest unknown: not found")
        return image.name, digest, size


class FakeRuntime:
    """An :class:`ImageRuntime` over a :class:`FakeRegistry`, with switches and counters.

    ``down`` makes every call raise :class:`RuntimeUnavailable`; ``other_bytes`` fills the
    disk with things that are not images; ``on_pull`` runs inside each pull, before the image
    lands, so a test can hold pulls open (a ``threading.Event``) to observe overlap. ``calls``
    counts every operation, ``pulls`` lists pulled references in order, ``max_active`` is the
    most pulls that were running at once; :meth:`wait_for` waits on them without polling.
    """

    name = "fake"

    def __init__(
        self,
        registry: FakeRegistry | None = None,
        *,
        capacity_bytes: int = 1024 * MIB,
        on_pull: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry or FakeRegistry()
        self.capacity_bytes = capacity_bytes
        self.other_bytes = 0
        self.on_pull = on_pull
        self.down = False
        self.calls: Counter[str] = Counter()
        self.pulls: list[str] = []
        self.credentials_seen: list[Credentials | None] = []
        self.active = 0
        self.max_active = 0
        self._held: dict[str, HeldImage] = {}  # by image id
        # Reentrant, so that a wait_for check may read the runtime while the wait holds it.
        self._lock = threading.Condition(threading.RLock())

    def fill_disk(self, percent: float) -> None:
        """Make the image filesystem ``percent`` full, whatever the images take."""
        self.other_bytes = max(0, int(self.capacity_bytes * percent / 100) - self._image_bytes())

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Block until ``check()`` holds, re-checked after every call into the runtime."""
        with self._lock:
            if not self._lock.wait_for(check, timeout):
                raise TimeoutError(f"fake runtime: timed out waiting for {what}: {self.calls}")

    def version(self, timeout: float | None = None) -> str:
        self._call("version")
        return "fake 1.0"

    def list_images(self) -> list[RuntimeImage]:
        self._call("list_images")
        with self._lock:
            return [held.as_runtime_image() for held in self._held.values()]

    def image_status(self, reference: str) -> RuntimeImage | None:
        self._call("image_status")
        with self._lock:
            held = self._find(reference)
            return held.as_runtime_image() if held else None

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str:
        self._call("pull")
        with self._lock:
            self.pulls.append(reference)
            self.credentials_seen.append(credentials)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._lock.notify_all()
        try:
            if self.on_pull is not None:
                self.on_pull(reference)
            name, digest, size = self.registry.resolve(reference, credentials)
            return self._land(reference, name, digest, size)
        finally:
            with self._lock:
                self.active -= 1
                self._lock.notify_all()

    def remove(self, reference: str) -> None:
        self._call("remove")
        with self._lock:
            held = self._find(reference)
            if held is not None:  # like CRI: every name of that image goes with it
                del self._held[held.id]

    def filesystem_usage(self) -> FilesystemUsage:
        self._call("filesystem_usage")
        used = self._image_bytes()
        available = max(0, self.capacity_bytes - used - self.other_bytes)
        return FilesystemUsage(used, self.capacity_bytes, available)

    def close(self) -> None:
        self.calls["close"] += 1

    def _call(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] += 1
            self._lock.notify_all()
        if self.down:
            raise RuntimeUnavailable(f"fake runtime is down ({operation})")

    def _land(self, reference: str, name: str, digest: str, size: int) -> str:
        image_id = "sha256:" + hashlib.sha256(digest.encode()).hexdigest()
        with self._lock:
            held = self._held.setdefault(image_id, HeldImage(image_id, size))
            held.digests.add(f"{name}@{digest}")
            image = parse_image(reference)
            if image.tag:
                tag = f"{image.name}:{image.tag}"
                for other in self._held.values():  # a tag names one image: it moves here
                    other.tags.discard(tag)
                held.tags.add(tag)
        return image_id

    def _find(self, reference: str) -> HeldImage | None:
        return next(
            (h for h in self._held.values() if reference in h.tags or reference in h.digests),
            None,
        )

    def _image_bytes(self) -> int:
        with self._lock:
            return sum(held.size for held in self._held.values())
