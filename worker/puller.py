"""Pulling on one node: skip what is present, merge duplicates, bound how many run at once.

Two requests for the same image at the same moment (a pull task and a re-warm, or two
re-warms) become one runtime pull whose result both receive; at most ``max_concurrent`` distinct
pulls run at once, so a node never floods its registry or its disk. Whether an image is present
is always asked of the runtime, never remembered: kubelet's image GC may remove it at any time.

The disk budget is checked inside the slot, right before the runtime is asked to pull: the pulls
that ran while this one waited have used disk too. Credentials are looked up only when a pull is
really needed, so a present image costs no API read.

A pull also takes a permit of its registry's cluster-wide cap (:mod:`worker.permits`) together
with its slot; while it waits for the permit it holds no slot, so the node keeps pulling from
other registries.

A tag whose digest the leader resolved (watcher/digests.py) is pulled by that digest, so every
node gets the same content, and then by its tag: CRI's PullImage of ``name@digest`` (and of
``name:tag@digest``, whose tag containerd drops) records no tag, and the kubelet looks images up
by the reference its pod names. The tag's pull finds every blob local and costs one manifest
request. When the manifest of that digest is gone (the tag moved on and the old one was
deleted), the tag's pull brings the newer one; when the manifest is there but its content is
broken (a layer the registry lost), the tag names that same content, so the failure stands: a
broken image costs one attempt per node, not two (a wave's canaries, watcher/waves.py).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from tasks.images import ImageRef
from tasks.models import Outcome

from .permits import Permit, RegistryPermits
from .runtime import Credentials, FailureKind, ImageRuntime, PullFailed, RuntimeImage

# Called only when a pull is needed: the candidates to try in order (none: anonymous).
CredentialLookup = Callable[[], list[Credentials]]

log = logging.getLogger(__name__)

# How runtimes say a manifest is not there: containerd cannot resolve the reference, Docker's
# registry client says manifest unknown.
_MANIFEST_GONE = re.compile(r"resolve reference|manifest unknown", re.IGNORECASE)


@dataclass(frozen=True)
class PullDone:
    outcome: Outcome  # PULLED or PRESENT
    image_id: str | None
    size: int | None
    seconds: float


class DiskBudgetExceeded(Exception):
    """The image filesystem is fuller than the budget: the pull is skipped, not failed."""


def is_present(image: ImageRef, held: RuntimeImage | None, digest: str | None = None) -> bool:
    """Whether ``held`` is ``image``: by digest when pinned, else by tag.

    ``digest`` is the manifest the catalog saw behind a tag: holding the tag under another
    digest means the tag moved, and the image is not present.
    """
    if held is None:
        return False
    if image.digest:
        return held.known_as(f"{image.name}@{image.digest}")
    if digest and not held.known_as(f"{image.name}@{digest}"):
        return False
    return held.known_as(str(image))


class Puller:
    def __init__(
        self,
        runtime: ImageRuntime,
        *,
        max_concurrent: int,
        timeout: float,
        disk_budget_percent: float | None = None,
        permits: RegistryPermits | None = None,
    ) -> None:
        self._runtime = runtime
        self._permits = permits
        self._timeout = timeout
        self._disk_budget = disk_budget_percent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[PullDone]] = {}

    def ensure(
        self,
        image: ImageRef,
        *,
        digest: str | None = None,
        credentials: CredentialLookup | None = None,
    ) -> PullDone:
        """Make ``image`` present: ask the runtime, pull only if it lacks the image (or holds
        the tag under another ``digest``). Raises :class:`PullFailed` when the runtime cannot.
        """
        started = time.perf_counter()
        held = self._runtime.image_status(image.pull_ref)
        if held is not None and is_present(image, held, digest):
            return PullDone(Outcome.PRESENT, held.id, held.size, time.perf_counter() - started)
        return self._merged(image, credentials, started, digest)

    def pull(
        self,
        image: ImageRef,
        *,
        digest: str | None = None,
        credentials: CredentialLookup | None = None,
    ) -> PullDone:
        """Pull ``image`` (by ``digest`` first, when given) without asking first: for a caller
        that listed the runtime's images and knows it is absent, or that pulls a present tag
        again to follow a move."""
        return self._merged(image, credentials, time.perf_counter(), digest)

    def _merged(
        self,
        image: ImageRef,
        credentials: CredentialLookup | None,
        started: float,
        digest: str | None = None,
    ) -> PullDone:
        """One runtime pull per image at a time; callers that come meanwhile share its result."""
        key = image.pull_ref
        with self._lock:
            future = self._in_flight.get(key)
            leader = future is None
            if future is None:
                future = self._in_flight[key] = Future()
        if not leader:
            return future.result()
        try:
            done = self._pull(image, credentials, started, digest)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(done)
            return done
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    def _pull(
        self,
        image: ImageRef,
        credentials: CredentialLookup | None,
        started: float,
        digest: str | None,
    ) -> PullDone:
        candidates = credentials() if credentials is not None else []
        permit = self._admitted(image.registry)
        try:
            self._check_disk()
            if digest and not image.digest:
                self._pull_digest(replace(image, tag=None, digest=digest), candidates)
            image_id = self._pull_with(image, candidates)
        finally:
            self._slots.release()
            permit.release()
        held = self._runtime.image_status(image.pull_ref)
        if held is None:  # the runtime said yes but does not hold it: treat as transient
            raise PullFailed(
                str(image), FailureKind.TRANSIENT, "pulled but not listed by the runtime"
            )
        return PullDone(Outcome.PULLED, image_id, held.size, time.perf_counter() - started)

    def _pull_digest(self, pinned: ImageRef, candidates: list[Credentials]) -> None:
        """The content the leader resolved. Gone from the registry (the tag moved on and the
        old manifest was deleted), the tag's pull that follows brings the newer one."""
        try:
            self._pull_with(pinned, candidates)
        except PullFailed as error:
            if error.kind is FailureKind.TRANSIENT or not _MANIFEST_GONE.search(error.reason):
                raise
            log.info("%s not pulled by digest, pulling its tag: %s", pinned, error.reason)

    def _admitted(self, registry: str) -> Permit:
        """A node slot taken, and a permit of ``registry`` held (no permit without a cap)."""
        if self._permits is None:
            self._slots.acquire()
            return Permit(None, registry, None)
        return self._permits.acquire(registry, self._slots)

    def _pull_with(self, image: ImageRef, candidates: list[Credentials]) -> str:
        """Pull with each candidate in turn until one is accepted (kubelet does the same)."""
        tries: list[Credentials | None] = [*candidates] or [None]
        *others, last = tries
        for auth in others:
            try:
                return self._runtime.pull(image.pull_ref, credentials=auth, timeout=self._timeout)
            except PullFailed as error:
                if error.kind is FailureKind.TRANSIENT:
                    raise
        return self._runtime.pull(image.pull_ref, credentials=last, timeout=self._timeout)

    def _check_disk(self) -> None:
        if self._disk_budget is None:
            return
        used = self._runtime.filesystem_usage().used_percent
        if used is not None and used > self._disk_budget:
            raise DiskBudgetExceeded(
                f"disk budget: image filesystem {used:.1f}% full, budget {self._disk_budget:g}%"
            )
