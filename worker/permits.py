"""A cluster-wide cap on pulls per registry: leased permits in NATS JetStream KV.

At thousands of nodes a new image would otherwise be pulled by every node at once, and the
registry (or its rate limit per account) is what gives. So a pull first takes one of the K
permits of its registry: K keys ``permits.<registry>.<n>`` (n < K) in one bucket, each taken by
an atomic create (``kv_create`` fails if the key exists), so no two holders ever share one and
there is no counter to get wrong.

Permits are leases. The bucket's entries expire ``LEASE`` seconds after their last write (the
server's clock, not the nodes'), and a holder rewrites its permits every third of that, guarded
by the revision it last wrote: a worker that dies (SIGKILL, node lost) stops renewing and its
permits come back within ``LEASE``.

A pull waits for a permit without holding one of its node's own slots (``WARM_MAX_CONCURRENT_
PULLS``): it takes a slot, tries for a permit, and gives the slot back while it waits. A holder
that gives a permit back says so on ``warm.permits.freed.<registry>``, where the pulls waiting
for one listen in one queue group: NATS hands each notice to one of them, which tries at once,
so a freed permit is taken within milliseconds and the other waiters, however many, are not
woken to rush it. A notice can be missed (published in the instant before a waiter listens,
sent to a waiter that is leaving, or never sent: a dead holder's lease expires silently), so a
waiter also tries after a jittered, growing pause, as thousands of waiting nodes can afford
without hammering NATS in step. A waiter that leaves passes on the notices it did not use. The
wait is bounded by the pull timeout; after it the pull fails as transient and Celery retries it
later.
NATS unreachable must not stop warming: after one short pause a pull goes ahead without a
permit, logged once per outage, and so do the pulls after it without asking NATS for a while.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tasks.bus import BusUnavailable, NatsBus, RevisionMismatch
from tasks.names import PERMITS_BUCKET, PERMITS_FREED
from tasks.settings import RuntimeSettings

from . import metrics
from .runtime import FailureKind, PullFailed

log = logging.getLogger(__name__)

BUCKET = PERMITS_BUCKET
LEASE = 30.0  # seconds a permit outlives its holder's last renewal
FIRST_PAUSE = 0.5  # seconds; doubles per try up to LONGEST_PAUSE, each drawn in [half, whole]
LONGEST_PAUSE = 5.0
OUTAGE_RECHECK = 30.0  # seconds between two tries of an unreachable NATS
_UNSAFE = re.compile(r"[^A-Za-z0-9-]")  # NATS key tokens: a host's dots and colon are escaped
WAITERS = "waiters"  # the queue group of the pulls waiting for a freed permit


@dataclass(frozen=True)
class RegistryLimits:
    default: int  # 0: no cap
    overrides: Mapping[str, int] = field(default_factory=dict)

    def of(self, registry: str) -> int:
        return self.overrides.get(registry, self.default)


def node_permits(bus: NatsBus, settings: RuntimeSettings, node: str) -> RegistryPermits:
    """A node worker's permits: a wait lasts at most as long as a pull may."""
    limits = RegistryLimits(settings.registry_pull_limit, dict(settings.registry_pull_limits))
    return RegistryPermits(bus, limits, node, max_wait=settings.pull_timeout)


def permit_prefix(registry: str) -> str:
    """The keys of ``registry``'s permits start with this; one token per host, so that
    ``a.io`` and ``a.io.b`` never share a prefix."""
    return f"permits.{_token(registry)}."


def freed_subject(registry: str) -> str:
    """Where a holder says it gave back a permit of ``registry``."""
    return f"{PERMITS_FREED}.{_token(registry)}"


def _token(registry: str) -> str:
    return _UNSAFE.sub(lambda match: f"_{ord(match.group()):02x}", registry)


class Permit:
    """One permit held (or none needed: ``key`` is None); :meth:`release` gives it back."""

    def __init__(self, owner: RegistryPermits | None, registry: str, key: str | None) -> None:
        self._owner = owner
        self.registry = registry
        self.key = key

    def release(self) -> None:
        if self._owner is not None and self.key is not None:
            self._owner.release(self)


class RegistryPermits:
    """The permits of every registry, as seen by one worker process."""

    def __init__(
        self,
        bus: NatsBus,
        limits: RegistryLimits,
        holder: str,
        *,
        max_wait: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._bus = bus
        self._limits = limits
        self._holder = holder
        self._max_wait = max_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        # Renewing and releasing a key one at a time: a release must delete the revision the
        # renewal wrote, not the one before it.
        self._writes = threading.Lock()
        self._held: dict[str, tuple[int, bytes]] = {}  # key: (revision, value)
        self._renewer: threading.Thread | None = None
        # While NATS is unreachable, pulls go uncapped until this (monotonic) time; 0: it is not.
        self._uncapped_until = 0.0
        bus.set_bucket_ttl(BUCKET, LEASE)

    def acquire(self, registry: str, slots: threading.Semaphore) -> Permit:
        """Return with a permit of ``registry`` held and one of ``slots`` taken; while waiting,
        hold neither. Raises a transient :class:`PullFailed` after ``max_wait`` seconds."""
        started = time.monotonic()
        if (permit := self._try_with_slot(registry, slots)) is not None:
            return permit
        metrics.PERMIT_WAITS.labels(registry).inc()
        notices = _FreedNotices(self._bus, registry)
        try:
            return self._wait(registry, slots, notices, started)
        finally:
            notices.stop()
            metrics.PERMIT_WAIT_SECONDS.labels(registry).observe(time.monotonic() - started)

    def _wait(
        self, registry: str, slots: threading.Semaphore, notices: _FreedNotices, started: float
    ) -> Permit:
        """Try again on each notice heard, else after each pause, until the wait is over."""
        tries = 0
        while True:
            waited = time.monotonic() - started
            if waited >= self._max_wait:
                limit = self._limits.of(registry)
                raise PullFailed(
                    registry,
                    FailureKind.TRANSIENT,
                    f"registry {registry} busy: none of its {limit} pull permits "
                    f"(WARM_REGISTRY_PULL_LIMIT/S) came free in {waited:.0f}s",
                )
            pause = min(LONGEST_PAUSE, FIRST_PAUSE * 2**tries)
            freed = notices.wait(min(random.uniform(pause / 2, pause), self._max_wait - waited))
            tries += 1
            # Woken, it may still wait for a slot of its own node: the permit is anyone's
            # meanwhile, a new pull's or a pausing waiter's.
            if (permit := self._try_with_slot(registry, slots, freed)) is not None:
                return permit

    def _try_with_slot(
        self, registry: str, slots: threading.Semaphore, freed: str | None = None
    ) -> Permit | None:
        """A permit and one of ``slots``, or neither."""
        slots.acquire()
        try:
            permit = self._try_take(registry, freed)
        except BaseException:
            slots.release()
            raise
        if permit is None:
            slots.release()
        return permit

    def release(self, permit: Permit) -> None:
        assert permit.key is not None
        metrics.PERMITS_HELD.labels(permit.registry).dec()
        with self._writes:
            with self._lock:
                held = self._held.pop(permit.key, None)
            if held is None:  # lost meanwhile: someone else may hold that key now
                return
            # NATS unreachable: the lease ends it.
            # Purged, not deleted: a delete marker would look like a permit held to the
            # listing in _take until it expired.
            try:
                self._bus.kv_purge(BUCKET, permit.key, up_to_revision=held[0])
            except BusUnavailable:
                return
        _tell_freed(self._bus, permit.registry, permit.key)

    def _try_take(self, registry: str, freed: str | None = None) -> Permit | None:
        """A permit (``freed`` first, a key a notice said was given back), or None when all
        are taken; an uncapped one when there is no cap or NATS cannot be reached. In an
        outage NATS is asked again only every ``OUTAGE_RECHECK`` seconds, so that pulls
        meanwhile do not each wait for a connection to time out."""
        limit = self._limits.of(registry)
        if limit == 0 or time.monotonic() < self._uncapped_until:
            return Permit(None, registry, None)
        try:
            permit = self._take_or_pause(registry, limit, freed)
        except BusUnavailable as error:
            with self._lock:
                first = self._uncapped_until == 0
                self._uncapped_until = time.monotonic() + OUTAGE_RECHECK
            if first:
                log.warning("pulls go uncapped until NATS is back: %s", error)
            return Permit(None, registry, None)
        with self._lock:
            ended, self._uncapped_until = self._uncapped_until != 0, 0.0
        if ended:
            log.info("NATS is back: pulls are capped per registry again")
        return permit

    def _take_or_pause(self, registry: str, limit: int, freed: str | None) -> Permit | None:
        """:meth:`_take`, once more after a short pause if NATS is not there (a restart takes
        about that), unless it is known to be down."""
        try:
            return self._take(registry, limit, freed)
        except BusUnavailable:
            if self._uncapped_until:
                raise
            self._sleep(random.uniform(FIRST_PAUSE, 2 * FIRST_PAUSE))
            return self._take(registry, limit, freed)

    def _take(self, registry: str, limit: int, freed: str | None) -> Permit | None:
        prefix = permit_prefix(registry)
        # One blind try first (no listing: a free cap costs one request), then the free ones.
        keys = [f"{prefix}{n}" for n in range(limit)]
        first = freed if freed in keys else random.choice(keys)
        if (permit := self._create(registry, first)) is not None:
            return permit
        taken = set(self._bus.kv_subjects(BUCKET, prefix))
        free = [key for key in keys if key != first and key not in taken]
        random.shuffle(free)
        for key in free:
            if (permit := self._create(registry, key)) is not None:
                return permit
        return None

    def _create(self, registry: str, key: str) -> Permit | None:
        value = json.dumps(
            {"holder": self._holder, "pid": os.getpid(), "since": time.time()}
        ).encode()
        try:
            revision = self._bus.kv_create(BUCKET, key, value)
        except RevisionMismatch:
            return None
        with self._lock:
            self._held[key] = (revision, value)
            if self._renewer is None or not self._renewer.is_alive():  # none yet, or forked
                self._renewer = threading.Thread(
                    target=self._renew_forever, name="permit-renewer", daemon=True
                )
                self._renewer.start()
        metrics.PERMITS_HELD.labels(registry).inc()
        return Permit(self, registry, key)

    def _renew_forever(self) -> None:
        while True:
            time.sleep(LEASE / 3)
            self.renew()

    def renew(self) -> None:
        """Rewrite every permit held, so that its lease starts again."""
        with self._lock:
            keys = list(self._held)
        for key in keys:
            with self._writes:
                with self._lock:
                    held = self._held.get(key)
                if held is None:  # released meanwhile
                    continue
                revision, value = held
                try:
                    renewed = self._bus.kv_update(BUCKET, key, value, revision)
                except BusUnavailable:
                    continue  # again next round; the lease may still hold
                except RevisionMismatch:
                    log.warning("pull permit %s expired before its renewal: NATS unreachable?", key)
                    with self._lock:
                        if self._held.get(key) == held:  # not taken again meanwhile, by a pull
                            del self._held[key]
                    continue
                with self._lock:
                    self._held[key] = (renewed, value)


class _FreedNotices:
    """What one waiting pull hears of permits of its registry given back: it listens as a
    member of the registry's queue group of waiters, so each notice reaches one waiter in the
    cluster. Notices it heard and did not use, it passes on when it stops listening."""

    def __init__(self, bus: NatsBus, registry: str) -> None:
        self._bus = bus
        self._registry = registry
        self._heard: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._end: Callable[[], None] | None = None
        with contextlib.suppress(BusUnavailable):  # NATS unreachable: the pauses alone
            self._end = bus.subscribe(freed_subject(registry), self._hear, queue=WAITERS)

    def wait(self, seconds: float) -> str | None:
        """The key of a permit given back, heard within ``seconds``; None if none was."""
        try:
            return self._heard.get(timeout=seconds)
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self._end is not None:
            self._end()
        while True:
            try:
                key = self._heard.get_nowait()
            except queue.Empty:
                return
            _tell_freed(self._bus, self._registry, key)

    def _hear(self, _subject: str, data: bytes) -> None:
        try:
            key = str(json.loads(data)["key"])
        except (ValueError, TypeError, KeyError):
            key = ""  # not from a worker of this version: a wake-up all the same
        self._heard.put(key)


def _tell_freed(bus: NatsBus, registry: str, key: str) -> None:
    """Tell one waiter (if any) that ``key`` was given back; NATS unreachable, the waiters'
    pauses find it."""
    with contextlib.suppress(BusUnavailable):
        bus.publish(freed_subject(registry), json.dumps({"key": key}).encode())
