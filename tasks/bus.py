"""A synchronous facade over nats-py, for code that is not asyncio (Celery tasks, the CLI).

nats-py is asyncio-only, while Celery tasks, the watcher's list/watch loops and click commands
are synchronous. Each bus owns one *session*: a background event loop thread and the one NATS
connection on it. The methods here submit coroutines to that loop and wait with a deadline, and
everything the session holds (connection, opened buckets) is touched on its loop thread only:

* the first call opens the connection under a lock, so threads that all make their first call
  at once share one connection instead of leaking the others;
* ``close()`` swaps the session out under the lock that calls are handed over under, and shuts
  it down on its own loop: a call in flight ends with :class:`BusUnavailable`, never opens a
  connection on the closing session, and a later call gets a fresh session;
* a process forked from one that used the bus (a prefork Celery pool) forgets the parent's
  session in the child: the loop thread did not survive the fork, so the child opens its own.

When NATS is down an operation raises :class:`BusUnavailable` with the server's address and the
cause; the next operation tries to connect again, so a component that treats reporting as best
effort keeps working through an outage and recovers by itself. A bucket whose stream vanished
(NATS restarted without its storage) is created again on the next access.

With NATS in operator mode (tasks/natsauth.py), each session connects with a user JWT of its
own (tasks/natscreds.py: signed with the watcher's account key, or got from the watcher's
credentials exchange) and renews it before it expires, reconnecting with the new one; a call
made in the instant of that reconnect waits for it.

Errors that nats-py only reports asynchronously (permission violations, slow consumers, lost
connections, exceptions in subscription callbacks) are logged, one line per kind per interval,
and counted in ``warm_nats_errors_total{kind}``: none of them is raised to a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue
from prometheus_client import Counter

from .natscreds import Credentials, CredentialsUnavailable, credentials_for
from .settings import NatsSettings

T = TypeVar("T")

log = logging.getLogger(__name__)

NATS_ERRORS = Counter(
    "warm_nats_errors",
    "Asynchronous NATS errors: permission violations, slow consumers, lost connections, "
    "failing subscription callbacks",
    ["kind"],
)
ERROR_LOG_INTERVAL = 30.0  # seconds between two log lines for one kind of error
# Seconds before trying again to renew a NATS user JWT: doubling from the first, up to the
# last (with jitter), so a hiccup of the exchange costs a second, and a fleet waiting for it to
# come back does not ask in step.
CREDENTIALS_RETRY = (1.0, 10.0)

STREAM_NOT_FOUND = 10059  # JetStream API error codes
WRONG_LAST_SEQUENCE = 10071


class BusUnavailable(RuntimeError):
    """NATS could not be reached or did not answer in time."""


class RevisionMismatch(RuntimeError):
    """A conditional write found another revision of the key than the one it named: someone
    else wrote (or created, or deleted) it first."""


@dataclass(frozen=True)
class BucketState:
    revision: int  # the bucket's latest revision
    created: datetime | None  # when its stream was created: a bucket made anew has a new one


class ErrorLog:
    """Counts every asynchronous error and logs one line per kind per ``interval``.

    A NATS that is down makes nats-py report a failed reconnect every second; a publisher
    without permission, one violation per publish. The first of a kind is logged at once, the
    next one after ``interval`` with the number that were not logged in between.
    """

    def __init__(
        self,
        url: str,
        interval: float = ERROR_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, error: BaseException, *, traceback: bool = False) -> None:
        NATS_ERRORS.labels(kind).inc()
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} more not logged in {self._interval:.0f}s)" if suppressed else ""
        log.warning(
            "NATS at %s: %s error: %s%s",
            self._url,
            kind,
            str(error) or repr(error),
            more,
            exc_info=error if traceback else None,
        )

    async def from_client(self, error: Exception) -> None:
        """nats-py's ``error_cb``."""
        self.report(error_kind(error), error)


def error_kind(error: BaseException) -> str:
    """A short, bounded label for an asynchronous error."""
    if isinstance(error, SlowConsumerError):
        return "slow_consumer"
    if "permissions violation" in str(error).lower():
        return "permission"
    if isinstance(error, nats.errors.AuthorizationError):
        return "authorization"
    if isinstance(error, OSError | TimeoutError | nats.errors.UnexpectedEOF):
        return "connection"
    return type(error).__name__


class NatsBus:
    """One NATS connection with JetStream key-value access, usable from synchronous code."""

    def __init__(
        self,
        settings: NatsSettings,
        credentials: Callable[[], Credentials | None] | None = None,
    ) -> None:
        """``credentials`` makes each session's operator-mode credentials (tests give a
        part's own); by default what ``settings`` call for (tasks/natscreds.py)."""
        self._settings = settings
        self._credentials = credentials or (lambda: credentials_for(settings))
        self._errors = ErrorLog(settings.url)
        self._ttls: dict[str, float] = {}
        self._lock = threading.Lock()
        self._session: _Session | None = None
        _BUSES.add(self)

    @property
    def url(self) -> str:
        return self._settings.url

    def publish(self, subject: str, payload: bytes) -> None:
        self._run(lambda session: session.publish(subject, payload))

    def set_bucket_ttl(self, bucket: str, seconds: float) -> None:
        """Entries of ``bucket`` expire ``seconds`` after their last write, on the server's clock.

        Applied when the bucket is opened or created; call it before the bucket's first use.
        """
        self._ttls[bucket] = seconds

    def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value``; returns the bucket's new revision."""
        return self._run(lambda s: s.on_bucket(bucket, lambda kv: kv.put(key, value)))

    def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value`` only if ``key`` does not exist (or expired, or was deleted); returns
        the new revision. Raises :class:`RevisionMismatch` when it exists."""
        return self._run(lambda s: s.on_bucket(bucket, lambda kv: _cas(kv.create(key, value))))

    def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int:
        """Store ``value`` only if ``key`` was last written at ``revision``; returns the new
        revision. Raises :class:`RevisionMismatch` otherwise."""
        return self._run(
            lambda s: s.on_bucket(bucket, lambda kv: _cas(kv.update(key, value, last=revision)))
        )

    def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value and its revision, or None when the key does not exist."""
        return self._run(lambda s: s.on_bucket(bucket, lambda kv: _get(kv, key)))

    def kv_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return self._run(lambda s: s.on_bucket(bucket, lambda _kv: s.keys(bucket, prefix)))

    def kv_subjects(self, bucket: str, prefix: str) -> list[str]:
        """The keys under ``prefix`` (ending in a dot) that hold an entry, a delete marker
        included, in one request and without a consumer: cheap enough to poll, for a bucket
        whose keys are removed with :meth:`kv_purge` and so never hold a marker."""
        return self._run(lambda s: s.on_bucket(bucket, lambda _kv: s.subjects(bucket, prefix)))

    def kv_purge(self, bucket: str, key: str, up_to_revision: int) -> None:
        """Remove ``key``'s entries up to ``up_to_revision`` and leave no marker behind; a write
        of the key after that revision (someone else's) stays."""
        self._run(lambda s: s.on_bucket(bucket, lambda _kv: s.purge(bucket, key, up_to_revision)))

    def kv_state(self, bucket: str) -> BucketState:
        """The bucket's latest revision and creation time: one call, however many keys."""
        return self._run(lambda s: s.on_bucket(bucket, _state))

    def kv_revision(self, bucket: str) -> int:
        """The bucket's latest revision: one call, however many keys it holds."""
        return self.kv_state(bucket).revision

    def kv_delete(self, bucket: str, key: str, last_revision: int | None = None) -> None:
        """Delete ``key``; with ``last_revision``, only if it was last written at that revision
        (else :class:`RevisionMismatch`)."""
        self._run(lambda s: s.on_bucket(bucket, lambda kv: _cas(kv.delete(key, last_revision))))

    def subscribe(
        self, subject: str, callback: Callable[[str, bytes], None], *, queue: str = ""
    ) -> Callable[[], None]:
        """Call ``callback(subject, data)`` on the bus thread for every message on ``subject``
        (with ``queue``, for those of them that NATS hands to this member of the queue group:
        each message goes to one member). Returns a function that ends the subscription.

        An exception in ``callback`` is logged and counted (kind ``callback``), not raised.
        """

        async def handler(msg: Msg) -> None:
            try:
                callback(msg.subject, msg.data)
            except Exception as error:
                self._errors.report("callback", error, traceback=True)

        session, subscription = self._run(
            lambda session: session.subscribe(subject, handler, queue)
        )
        return lambda: session.unsubscribe(subscription)

    def flush(self, timeout: float = 5.0) -> None:
        self._run(lambda session: session.flush(timeout))

    def close(self) -> None:
        """Drain the connection and stop the loop thread; a later call opens a new session."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> NatsBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, operation: Callable[[_Session], Coroutine[Any, Any, T]]) -> T:
        future = self._submit(operation)
        deadline = self._settings.connect_timeout * 2 + 5
        try:
            return future.result(timeout=deadline)
        except (BusUnavailable, RevisionMismatch):
            raise
        except CancelledError as error:  # close() ended it on the loop
            raise BusUnavailable(f"the bus to NATS at {self.url} was closed meanwhile") from error
        except TimeoutError as error:
            future.cancel()
            raise BusUnavailable(f"NATS at {self.url} did not answer in {deadline:.0f}s") from error
        except (nats.errors.Error, OSError) as error:
            raise BusUnavailable(f"NATS at {self.url}: {error!r}") from error

    def _submit(self, operation: Callable[[_Session], Coroutine[Any, Any, T]]) -> Future[T]:
        """Hand ``operation`` to the session's loop, under the lock ``close()`` takes: what a
        session receives, it receives before its shutdown, which ends it."""
        with self._lock:
            if self._session is None:
                self._session = _Session(
                    self._settings, self._errors, self._ttls, self._credentials()
                )
            session = self._session
            return asyncio.run_coroutine_threadsafe(operation(session), session.loop)

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's loop thread is gone, and its lock may have been held
        by a thread that does not exist here. Drop both; the next call starts afresh."""
        self._lock = threading.Lock()
        self._session = None


_BUSES: weakref.WeakSet[NatsBus] = weakref.WeakSet()


def _forget_sessions_after_fork() -> None:
    for bus in list(_BUSES):
        bus._forget_after_fork()


os.register_at_fork(after_in_child=_forget_sessions_after_fork)


# What a request cut off by a reconnect raises: no answer, or the connection gone under it.
_CUT_OFF = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
)


class _Session:
    """One event loop thread and the connection on it. Apart from ``loop``, everything here is
    used on that thread only, so it needs no locks."""

    def __init__(
        self,
        settings: NatsSettings,
        errors: ErrorLog,
        ttls: dict[str, float],
        credentials: Credentials | None,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._renewing: asyncio.Task[None] | None = None
        self._renewal_reconnect_until = 0.0  # loop time until which a reconnect is a renewal's
        self._renewals = 0  # reconnects a renewal started: a request cut off by one is retried
        self._credentials_error = ""  # why the last renewal failed, until one succeeds
        self._errors = errors
        self._ttls = ttls
        self._client: Client | None = None
        self._buckets: dict[str, KeyValue] = {}
        self._connecting = asyncio.Lock()  # binds to the loop that first awaits it: ours
        self.closed = False  # set by close(), from another thread
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats-bus", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return self._settings.url

    async def connection(self) -> Client:
        if self.closed:  # a call that reached the loop after close(): no new connection
            raise BusUnavailable(f"the bus to NATS at {self.url} was closed meanwhile")
        async with self._connecting:  # one connection, however many callers wait for it
            if self._client is None or self._client.is_closed:
                self._client = await self._connect()
                self._buckets.clear()
            return self._client

    async def _connect(self) -> Client:
        settings = self._settings
        options: dict[str, Any] = {
            "servers": [settings.url],
            "connect_timeout": settings.connect_timeout,
            # One retry at connect time so an outage fails fast with BusUnavailable ...
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 1,
            "allow_reconnect": True,
            "error_cb": self._errors.from_client,
            "name": "warm-images",
        }
        if settings.user:
            options.update(user=settings.user, password=settings.password or "")
        if settings.token:
            options["token"] = settings.token
        if settings.tls_ca_file:
            options["tls"] = ssl.create_default_context(cafile=settings.tls_ca_file)
        if self._credentials is not None:
            options.update(await self._with_credentials(self._credentials))
        try:
            client = await nats.connect(**options)
        except Exception as error:
            raise BusUnavailable(f"cannot connect to NATS at {settings.url}: {error!r}") from error
        # ... and, once connected, reconnect forever: a NATS restart must not close the bus.
        client.options["max_reconnect_attempts"] = -1
        return client

    async def _with_credentials(self, credentials: Credentials) -> dict[str, Any]:
        """nats-py's callbacks for a user JWT, fetched first when there is none yet, and kept
        renewed before it expires. nats-py asks for the JWT on every reconnect; the server
        ends a connection whose JWT expires (nats-py then closes it for good), so a renewal
        reconnects at once, with the new JWT and the subscriptions kept."""
        if credentials.renew_in() == 0:
            try:
                await asyncio.to_thread(credentials.renew)
            except CredentialsUnavailable as error:
                raise BusUnavailable(f"no NATS credentials for {self.url}: {error}") from None
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew(credentials))
        return {"user_jwt_cb": credentials.jwt, "signature_cb": credentials.sign}

    async def _renew(self, credentials: Credentials) -> None:
        pause, longest = CREDENTIALS_RETRY
        while True:
            await asyncio.sleep(credentials.renew_in())
            try:
                await asyncio.to_thread(credentials.renew)
            except CredentialsUnavailable as error:
                self._errors.report("credentials", error)
                self._credentials_error = str(error)
                await asyncio.sleep(random.uniform(pause / 2, pause))
                pause = min(pause * 2, longest)
                continue
            pause, self._credentials_error = CREDENTIALS_RETRY[0], ""
            if self._client is not None and self._client.is_connected:
                loop = asyncio.get_running_loop()
                self._renewal_reconnect_until = loop.time() + self._settings.connect_timeout
                self._renewals += 1
                await self._client.force_reconnect()

    async def _after_renewal(self, client: Client) -> bool:
        """Whether a reconnect in progress is the one a renewal started, and came back: that
        one takes an instant, so a call waits for it rather than fail."""
        loop = asyncio.get_running_loop()
        while client.is_reconnecting and loop.time() < self._renewal_reconnect_until:
            await asyncio.sleep(0.02)
        return client.is_connected

    async def bucket(self, name: str) -> KeyValue:
        client = await self.connection()
        if client.is_reconnecting and not await self._after_renewal(client):
            # A KV request cannot succeed before the connection is back; waiting out its
            # timeout would only hold up the caller (a pull looking up its pull secrets).
            # Publishes are different: nats-py buffers them across a reconnect.
            why = f" ({self._credentials_error})" if self._credentials_error else ""
            raise BusUnavailable(f"NATS at {self.url} is unreachable, reconnecting{why}")
        if name in self._buckets:
            return self._buckets[name]
        jetstream = client.jetstream(timeout=self._settings.connect_timeout)
        ttl = self._ttls.get(name)
        try:
            bucket = await jetstream.key_value(name)
        except BucketNotFoundError:
            bucket = await jetstream.create_key_value(bucket=name, history=1, ttl=ttl)
        else:
            if ttl is not None:
                info = (await bucket.status()).stream_info
                if info.config.max_age != ttl:  # the setting changed since its creation
                    info.config.max_age = ttl
                    # The server refuses a duplicates window longer than the max age (a bucket
                    # made without a TTL has the default two minutes).
                    info.config.duplicate_window = min(info.config.duplicate_window or ttl, ttl)
                    await jetstream.update_stream(info.config)
        self._buckets[name] = bucket
        return bucket

    async def on_bucket(self, name: str, operation: Callable[[KeyValue], Awaitable[T]]) -> T:
        """Run ``operation`` on the bucket; once more on a new one if its stream is gone, or
        once the connection is back if a renewal's reconnect cut it off."""
        bucket = await self.bucket(name)
        renewals = self._renewals
        try:
            return await operation(bucket)
        except _CUT_OFF:
            if self._renewals == renewals:
                raise
            # A renewal's reconnect cut the request off: once the connection is back, again.
            return await operation(await self.bucket(name))
        except (NoStreamResponseError, APIError) as error:
            if isinstance(error, APIError) and getattr(error, "err_code", None) != STREAM_NOT_FOUND:
                raise
        log.warning(
            "NATS at %s lost bucket %s (restarted without storage?): creating it", self.url, name
        )
        self._buckets.pop(name, None)
        return await operation(await self.bucket(name))

    async def publish(self, subject: str, payload: bytes) -> None:
        await (await self.connection()).publish(subject, payload)

    async def flush(self, timeout: float) -> None:
        await (await self.connection()).flush(timeout=int(max(1, timeout)))

    async def subscribe(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]], queue: str
    ) -> tuple[_Session, Subscription]:
        client = await self.connection()
        subscription = await client.subscribe(subject, queue=queue, cb=handler)
        await client.flush()
        return self, subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """End ``subscription``, from any thread; a closed session ended it already."""
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                asyncio.run_coroutine_threadsafe(self._unsubscribe(subscription), self.loop)

    async def _unsubscribe(self, subscription: Subscription) -> None:
        with contextlib.suppress(nats.errors.Error):  # its connection is gone: so is it
            await subscription.unsubscribe()

    async def keys(self, bucket: str, prefix: str) -> list[str]:
        # Not KeyValue.keys(): its push consumer may signal "no more keys" before the first
        # key arrives (a race seen under load), returning too few. A pull consumer cannot:
        # what it holds is counted when it is created, and fetched until none is pending.
        jetstream = (await self.connection()).jetstream(timeout=self._settings.connect_timeout)
        scope = f"{prefix}>" if prefix.endswith(".") else ">"  # filter on the server if we can
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            headers_only=True,
            inactive_threshold=60,
        )
        consumer = await jetstream.pull_subscribe(
            f"$KV.{bucket}.{scope}", stream=f"KV_{bucket}", config=config
        )
        try:
            pending = (await consumer.consumer_info()).num_pending
            keys = []
            quiet_fetches = 0
            while pending:
                try:
                    batch = await consumer.fetch(min(pending, 1000), timeout=2)
                except nats.errors.TimeoutError:
                    # Keys purged or expired after the count never arrive: ask the server what
                    # is still pending rather than wait for them.
                    quiet_fetches += 1
                    if quiet_fetches > 3:
                        raise
                    pending = (await consumer.consumer_info()).num_pending
                    continue
                for msg in batch:
                    pending = msg.metadata.num_pending
                    if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                        keys.append(msg.subject[len(f"$KV.{bucket}.") :])
        finally:
            await consumer.unsubscribe()
        return sorted(key for key in keys if key.startswith(prefix))

    async def subjects(self, bucket: str, prefix: str) -> list[str]:
        jetstream = (await self.connection()).jetstream(timeout=self._settings.connect_timeout)
        stream = await jetstream.stream_info(
            f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{prefix}>"
        )
        return sorted(subject[len(f"$KV.{bucket}.") :] for subject in stream.state.subjects or {})

    async def purge(self, bucket: str, key: str, up_to_revision: int) -> None:
        jetstream = (await self.connection()).jetstream(timeout=self._settings.connect_timeout)
        await jetstream.purge_stream(
            f"KV_{bucket}", seq=up_to_revision + 1, subject=f"$KV.{bucket}.{key}"
        )

    def close(self) -> None:
        """Shut down on the loop thread, then stop it; from any thread but the loop's own."""
        self.closed = True
        future = asyncio.run_coroutine_threadsafe(self._shut_down(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    async def _shut_down(self) -> None:
        """Drain the connection, then end every task nats-py left on the loop, so none is
        destroyed pending when the loop stops."""
        client, self._client = self._client, None
        self._buckets.clear()
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.drain(), 5)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def _cas(write: Awaitable[T]) -> T:
    """A conditional write, its lost race raised as :class:`RevisionMismatch`.

    A create refused because the key exists reads the key (nats-py tells a delete marker so);
    a KeyNotFoundError there means it was purged in between: the race was lost all the same.
    """
    try:
        return await write
    except APIError as error:
        if (
            isinstance(error, KeyWrongLastSequenceError | KeyNotFoundError)
            or getattr(error, "err_code", None) == WRONG_LAST_SEQUENCE
        ):
            raise RevisionMismatch(getattr(error, "description", None) or str(error)) from error
        raise


async def _get(bucket: KeyValue, key: str) -> tuple[bytes, int] | None:
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    return (entry.value or b""), int(entry.revision or 0)


async def _state(bucket: KeyValue) -> BucketState:
    info = (await bucket.status()).stream_info
    return BucketState(int(info.state.last_seq), info.created)
