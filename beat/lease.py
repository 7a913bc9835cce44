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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid

from nats.js.errors import APIError, BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tasks.bus import NatsBus
from tasks.names import BEAT_BUCKET
from tasks.settings import NatsSettings

log = logging.getLogger(__name__)

LEADER_KEY = "leader"


class LeaseBus(NatsBus):
    """The NATS bus plus the compare-and-set writes of a lease, in a bucket with a max age."""

    def __init__(self, settings: NatsSettings, ttl: float) -> None:
        super().__init__(settings)
        self._ttl = ttl

    def lease_create(self, value: bytes) -> int | None:
        """Write the lease if nobody holds it; its revision, or None when it is held."""
        return self._run(self._lease_write(value, None))

    def lease_update(self, value: bytes, last: int) -> int | None:
        """Renew the lease written at revision ``last``; None when it is no longer ours."""
        return self._run(self._lease_write(value, last))

    def lease_delete(self, last: int) -> None:
        self._run(self._lease_delete(last))

    async def _lease_bucket(self) -> KeyValue:
        # Cached with the bus's buckets, which a new connection clears.
        if BEAT_BUCKET in self._buckets:
            return self._buckets[BEAT_BUCKET]
        jetstream = (await self._connection()).jetstream(timeout=self._settings.connect_timeout)
        try:
            bucket = await jetstream.key_value(BEAT_BUCKET)
        except BucketNotFoundError:
            bucket = await jetstream.create_key_value(bucket=BEAT_BUCKET, history=1, ttl=self._ttl)
        info = (await bucket.status()).stream_info
        if info.config.max_age != self._ttl:  # WARM_BEAT_LOCK_TTL changed since creation
            info.config.max_age = self._ttl
            await jetstream.update_stream(info.config)
        self._buckets[BEAT_BUCKET] = bucket
        return bucket

    async def _lease_write(self, value: bytes, last: int | None) -> int | None:
        bucket = await self._lease_bucket()
        try:
            if last is None:
                return int(await bucket.create(LEADER_KEY, value))
            return int(await bucket.update(LEADER_KEY, value, last=last))
        except KeyWrongLastSequenceError:
            return None

    async def _lease_delete(self, last: int) -> None:
        bucket = await self._lease_bucket()
        with contextlib.suppress(APIError):  # another beat holds it by now: not ours to delete
            await bucket.delete(LEADER_KEY, last=last)


class Lease:
    """This beat's view of the lease: ``hold()`` before dispatching, ``release()`` at exit."""

    def __init__(self, bus: LeaseBus, ttl: float, holder: str | None = None) -> None:
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
            self._revision = self._bus.lease_update(value, self._revision)
            if self._revision is None:
                log.warning("beat %s lost the leader lease", self.holder)
        if self._revision is None:
            self._revision = self._bus.lease_create(value)
            if self._revision is not None:
                log.info("beat %s is the leader: it dispatches the re-warms", self.holder)
        if self._revision is not None:
            self._renewed = started
        return self._revision is not None

    def release(self) -> None:
        if self._revision is not None:
            self._bus.lease_delete(self._revision)
            self._revision = None
