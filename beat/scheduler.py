"""A beat scheduler that fans the periodic re-warm out itself, and only while it leads.

A beat entry can only send one task; a re-warm must reach every node's own queue. Rather than
send one task that some other process would have to fan out, the scheduler does the fan-out
when the re-warm entry is due: one ``rewarm_node`` per node, paced over ``WARM_REWARM_WINDOW``,
through the same code as ``celery -A tasks rewarm``. Every other entry is sent as usual.

Only the beat holding the leader lease (:mod:`beat.lease`) sends anything; a second beat
started by mistake, or during a rollout, waits as a standby and takes over when the leader
stops. A beat that becomes leader re-warms at once: the previous leader's schedule is lost with
it, and a re-warm too many costs each node one diff, while one too few leaves nodes cold for a
whole interval.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from kombu.exceptions import KombuError

from tasks.bus import BusUnavailable, NatsBus
from tasks.names import REWARM_CATALOG
from tasks.rewarm import dispatch_rewarm
from tasks.settings import load_settings

from .lease import Lease

log = logging.getLogger(__name__)


class RewarmScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = load_settings()
        self._rewarm = settings.rewarm
        self._bus = NatsBus(settings.nats)
        self._lease = Lease(self._bus, settings.rewarm.lock_ttl)
        self._leading: bool | None = None  # unknown until the first tick
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # Wake up often enough to renew the lease (leader) or to take it over (standby).
        pause = self._rewarm.lock_ttl / 3
        if not self._lead():
            return pause
        return min(float(super().tick(*args, **kwargs)), pause)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if entry.task != REWARM_CATALOG:
            super().apply_entry(entry, producer=producer)
            return
        if not self._still_lead():  # the lease may have lapsed while beat waited on the broker
            return
        window = min(self._rewarm.window, self._rewarm.interval / 2)
        try:
            sent = dispatch_rewarm(
                self.app,
                self._bus,
                window=window,
                expires=self._rewarm.interval,  # the next periodic re-warm supersedes this one
                keep_going=self._still_lead,
                # Waiting out a broker restart must not outlast the lease it dispatches under.
                broker_patience=self._rewarm.lock_ttl / 3,
            )
        except BusUnavailable as error:
            log.error("re-warm skipped, the catalog is unreachable: %s", error)
            return
        except (KombuError, OSError) as error:
            # Beat must outlive a broker outage; the next interval re-warms every node anyway.
            log.error("re-warm interrupted, the broker is unreachable: %s", error)
            return
        revision = sent[0].revision if sent else 0
        log.info("re-warm sent to %d node(s) at revision %d", len(sent), revision)

    def close(self) -> None:
        try:
            self._lease.release()
        except BusUnavailable as error:
            log.warning("leader lease not released, it expires by itself: %s", error)
        self._bus.close()
        super().close()

    def _lead(self) -> bool:
        held = self._still_lead()
        took_over = held and not self._leading
        if not held and self._leading is not False:
            log.info("another beat holds the leader lease: standing by")
        self._leading = held
        if took_over:
            self._rewarm_now()
        return held

    def _still_lead(self) -> bool:
        try:
            return self._lease.hold()
        except BusUnavailable as error:
            log.error("leader lease unreachable, not dispatching: %s", error)
            return False

    def _rewarm_now(self) -> None:
        for entry in list(self.schedule.values()):
            if entry.task == REWARM_CATALOG:
                self.reserve(entry)  # the next one is an interval from now
                self._heap = None  # rebuilt from the schedule on the next tick
                self.apply_entry(entry)
