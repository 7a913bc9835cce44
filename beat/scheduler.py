"""A beat scheduler that fans the periodic re-warm out itself.

A beat entry can only send one task; a re-warm must reach every node's own queue. Rather than
send one task that some other process would have to fan out, the scheduler does the fan-out
when the re-warm entry is due: one ``rewarm_node`` per node, through the same code as
``celery -A tasks rewarm``. Every other entry is sent as usual.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import ScheduleEntry, Scheduler

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.names import REWARM_CATALOG
from tasks.rewarm import dispatch_rewarm
from tasks.settings import load_settings

log = logging.getLogger(__name__)


class RewarmScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bus: NatsBus | None = None
        super().__init__(*args, **kwargs)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if entry.task != REWARM_CATALOG:
            super().apply_entry(entry, producer=producer)
            return
        try:
            sent = dispatch_rewarm(self.app, CatalogStore(self.bus))
        except BusUnavailable as error:
            log.error("re-warm skipped, the catalog is unreachable: %s", error)
            return
        log.info("re-warm sent to %d node(s)", len(sent))

    @property
    def bus(self) -> NatsBus:
        if self._bus is None:
            self._bus = NatsBus(load_settings().nats)
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
        super().close()
