"""Pulling on one node: skip what is present, merge duplicates, bound how many run at once.

Two requests for the same image at the same moment (a pull task and a re-warm, or two
re-warms) become one runtime pull whose result both receive; at most ``max_concurrent`` distinct
pulls run at once, so a node never floods its registry or its disk. Whether an image is present
is always asked of the runtime, never remembered: kubelet's image GC may remove it at any time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from tasks.images import ImageRef
from tasks.models import Outcome

from .runtime import Credentials, FailureKind, ImageRuntime, PullFailed, RuntimeImage


@dataclass(frozen=True)
class PullDone:
    outcome: Outcome  # PULLED or PRESENT
    image_id: str | None
    size: int | None
    seconds: float


def is_present(image: ImageRef, held: RuntimeImage | None) -> bool:
    """Whether ``held`` is ``image``: by digest when the reference pins one, else by tag."""
    if held is None:
        return False
    if image.digest:
        return held.known_as(f"{image.name}@{image.digest}")
    return held.known_as(str(image))


class Puller:
    def __init__(self, runtime: ImageRuntime, *, max_concurrent: int, timeout: float) -> None:
        self._runtime = runtime
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[PullDone]] = {}

    def ensure(
        self,
        image: ImageRef,
        *,
        credentials: Credentials | None = None,
        held: RuntimeImage | None = None,
        known_absent: bool = False,
    ) -> PullDone:
        """Make ``image`` present; raises :class:`PullFailed` when the runtime cannot.

        ``held``/``known_absent`` let a caller that listed the runtime's images skip the
        ImageStatus round trip.
        """
        started = time.perf_counter()
        if not known_absent:
            held = held or self._runtime.image_status(image.pull_ref)
            if is_present(image, held):
                assert held is not None
                return PullDone(Outcome.PRESENT, held.id, held.size, time.perf_counter() - started)
        key = image.pull_ref
        with self._lock:
            future = self._in_flight.get(key)
            leader = future is None
            if future is None:
                future = self._in_flight[key] = Future()
        if not leader:
            return future.result()
        try:
            done = self._pull(image, credentials, started)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(done)
            return done
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    def _pull(self, image: ImageRef, credentials: Credentials | None, started: float) -> PullDone:
        with self._slots:
            image_id = self._runtime.pull(
                image.pull_ref, credentials=credentials, timeout=self._timeout
            )
        held = self._runtime.image_status(image.pull_ref)
        if held is None:  # the runtime said yes but does not hold it: treat as transient
            raise PullFailed(
                str(image), FailureKind.TRANSIENT, "pulled but not listed by the runtime"
            )
        return PullDone(Outcome.PULLED, image_id, held.size, time.perf_counter() - started)
