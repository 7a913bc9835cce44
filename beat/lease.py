"""Exactly one dispatching beat: a leader lease held as a key in NATS JetStream key-value.

Why NATS and not RedBeat's Redis lock: NATS is part of every installation, while Redis is not
once the broker is RabbitMQ; RedBeat would then need a Redis of its own only for a lock. A KV
key gives the same guarantee with either broker:

* the lease is key ``leader`` in bucket ``warm-beat``, whose streams keep messages for
  ``WARM_BEAT_LOCK_TTL`` seconds (the bucket's max age), so a beat that dies or hangs loses the
  lease on the server's own clock, with no clock skew between pods to reason about;
* taking it is a create (succeeds only when the key is absent, expired or deleted), renewing it
  is an update that names the revision the holder last wrote (compare-and-set), so two beats can
  never both believe they hold it: the loser's write is rejected by the server;
* a beat that stops cleanly deletes the key, naming its revision, and a standby takes over on
  its next tick instead of waiting for the lease to expire.

A standby beat keeps ticking and trying; it never dispatches while another holds the lease.

NATS restarted without its storage ends the lease at once (the bucket comes back empty, with
its TTL). The holder notices at its next renewal, a third of the TTL at most; a standby that
tries in between takes the lease, so two beats may both dispatch for that long. The worst it
costs is one re-warm sent twice, which each node answers with one diff.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid

from tasks.bus import NatsBus, RevisionMismatch
from tasks.names import BEAT_BUCKET

log = logging.getLogger(__name__)

LEADER_KEY = "leader"


class Lease:
    """This beat's view of the lease: ``hold()`` before dispatching, ``release()`` at exit."""

    def __init__(self, bus: NatsBus, ttl: float, holder: str | None = None) -> None:
        bus.set_bucket_ttl(BEAT_BUCKET, ttl)  # the server expires a lease nobody renews
        self._bus = bus
        self._ttl = ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._revision: int | None = None
        self._renewed = 0.0

    @property
    def held(self) -> bool:
        """Whether this beat held the lease at the last check, and it cannot have expired."""
        fresh = time.monotonic() - self._renewed < self._ttl
        return self._revision is not None and fresh

    def hold(self) -> bool:
        """Take the lease or keep it; True when this beat may dispatch.

        Renewal waits until a third of the TTL has passed, so a beat that calls this often
        (between batches of a paced fan-out) costs a write every few seconds at most.
        """
        if self.held and time.monotonic() - self._renewed < self._ttl / 3:
            return True
        # The server's expiry counts from its write, which comes after this instant.
        started = time.monotonic()
        value = json.dumps({"holder": self.holder, "at": time.time()}).encode()
        if self._revision is not None:
            try:
                self._revision = self._bus.kv_update(BEAT_BUCKET, LEADER_KEY, value, self._revision)
            except RevisionMismatch:
                log.warning("beat %s lost the leader lease", self.holder)
                self._revision = None
        if self._revision is None:
            with contextlib.suppress(RevisionMismatch):  # another beat holds it
                self._revision = self._bus.kv_create(BEAT_BUCKET, LEADER_KEY, value)
                log.info("beat %s is the leader: it dispatches the re-warms", self.holder)
        if self._revision is not None:
            self._renewed = started
        return self._revision is not None

    def release(self) -> None:
        if self._revision is not None:
            revision, self._revision = self._revision, None
            with contextlib.suppress(RevisionMismatch):  # another beat holds it by now
                self._bus.kv_delete(BEAT_BUCKET, LEADER_KEY, last_revision=revision)
