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
PULLS``): it takes a slot, tries for a permit, and gives the slot back while it pauses, with a
jittered, growing pause so thousands of waiting nodes do not hammer NATS in step. The wait is
bounded by the pull timeout; after it the pull fails as transient and Celery retries it later.
NATS unreachable must not stop warming: after one short pause a pull goes ahead without a
permit, logged once per outage, and so do the pulls after it without asking NATS for a while.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tasks.bus import BusUnavailable, NatsBus, RevisionMismatch
from tasks.names import PERMITS_BUCKET
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
    token = _UNSAFE.sub(lambda match: f"_{ord(match.group()):02x}", registry)
    return f"permits.{token}."


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
        tries = 0
        while True:
            slots.acquire()
            try:
                permit = self._try_take(registry)
            except BaseException:
                slots.release()
                raise
            if permit is not None:
                if tries:
                    metrics.PERMIT_WAIT_SECONDS.labels(registry).observe(time.monotonic() - started)
                return permit
            slots.release()
            if tries == 0:
                metrics.PERMIT_WAITS.labels(registry).inc()
            waited = time.monotonic() - started
            if waited >= self._max_wait:
                metrics.PERMIT_WAIT_SECONDS.labels(registry).observe(waited)
                limit = self._limits.of(registry)
                raise PullFailed(
                    registry,
                    FailureKind.TRANSIENT,
                    f"registry {registry} busy: none of its {limit} pull permits "
                    f"(WARM_REGISTRY_PULL_LIMIT/S) came free in {waited:.0f}s",
                )
            pause = min(LONGEST_PAUSE, FIRST_PAUSE * 2**tries)
            self._sleep(min(random.uniform(pause / 2, pause), self._max_wait - waited))
            tries += 1

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
            with contextlib.suppress(BusUnavailable):
                self._bus.kv_purge(BUCKET, permit.key, up_to_revision=held[0])

    def _try_take(self, registry: str) -> Permit | None:
        """A permit, or None when all are taken; an uncapped one when there is no cap or NATS
        cannot be reached. In an outage NATS is asked again only every ``OUTAGE_RECHECK``
        seconds, so that pulls meanwhile do not each wait for a connection to time out."""
        limit = self._limits.of(registry)
        if limit == 0 or time.monotonic() < self._uncapped_until:
            return Permit(None, registry, None)
        try:
            permit = self._take_or_pause(registry, limit)
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

    def _take_or_pause(self, registry: str, limit: int) -> Permit | None:
        """:meth:`_take`, once more after a short pause if NATS is not there (a restart takes
        about that), unless it is known to be down."""
        try:
            return self._take(registry, limit)
        except BusUnavailable:
            if self._uncapped_until:
                raise
            self._sleep(random.uniform(FIRST_PAUSE, 2 * FIRST_PAUSE))
            return self._take(registry, limit)

    def _take(self, registry: str, limit: int) -> Permit | None:
        prefix = permit_prefix(registry)
        # One blind try first (no listing: a free cap costs one request), then the free ones.
        first = random.randrange(limit)
        if (permit := self._create(registry, f"{prefix}{first}")) is not None:
            return permit
        taken = set(self._bus.kv_subjects(BUCKET, prefix))
        free = [n for n in range(limit) if n != first and f"{prefix}{n}" not in taken]
        random.shuffle(free)
        for n in free:
            if (permit := self._create(registry, f"{prefix}{n}")) is not None:
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
                        self._held.pop(key, None)
                    continue
                with self._lock:
                    self._held[key] = (renewed, value)
