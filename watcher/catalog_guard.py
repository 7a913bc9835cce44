"""Noticing that NATS lost the catalog, so that the leader writes it again at once.

By default the chart runs NATS without persistent storage: a NATS pod that restarts comes back
with empty buckets, and nothing tells the watcher (its connection simply reconnects). Nodes
would find no slice until the periodic resync, hours later. So the leader looks at the catalog
bucket every few seconds, one stream-info request each time: a bucket created anew (another
creation time) or a revision below the highest one it saw or wrote means the catalog is gone.
The dispatcher then owes a full sync: every key written again and every node re-warmed, which
also makes each node write its status again (the status bucket went with the catalog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from tasks.bus import BusUnavailable, NatsBus
from tasks.names import CATALOG_BUCKET

from . import metrics

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0  # seconds: a lost catalog is rewritten well within 10 s


class CatalogGuard:
    def __init__(
        self,
        bus: NatsBus,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._created: datetime | None = None
        self._highest = 0  # the highest revision seen in, or written to, the bucket
        self._written = 0

    def lost(self, written: int) -> bool:
        """Whether the bucket lost its content since the last check; ``written`` is the latest
        revision this watcher wrote. At most one request per interval; False while NATS is
        unreachable (the dispatcher finds that out by itself)."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval
        if written != self._written:  # a revision from before a loss must not count twice
            self._written, self._highest = written, max(self._highest, written)
        try:
            state = self._bus.kv_state(CATALOG_BUCKET)
        except BusUnavailable:
            return False
        recreated = self._created is not None and state.created != self._created
        reset = state.revision < self._highest
        self._created, self._highest = state.created, state.revision
        if recreated or reset:
            log.warning(
                "the catalog in NATS is gone (bucket %s at revision %d, %s; NATS restarted "
                "without its storage?): writing it again and re-warming every node",
                CATALOG_BUCKET,
                state.revision,
                "created anew" if recreated else "revision went back",
            )
            metrics.CATALOG_LOSSES.inc()
        return recreated or reset
