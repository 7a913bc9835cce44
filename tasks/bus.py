"""A synchronous facade over nats-py, for code that is not asyncio (Celery tasks, the CLI).

nats-py is asyncio-only, while Celery tasks, the watcher's list/watch loops and click commands
are synchronous. Each process gets one background event loop thread that owns one NATS
connection; the methods here submit coroutines to it and wait with a deadline. The loop is
created on first use, so a process that forks (a prefork Celery pool) creates its own after the
fork instead of inheriting a loop that no longer runs.

When NATS is down an operation raises :class:`BusUnavailable` with the server's address and the
cause; the next operation tries to connect again, so a component that treats reporting as best
effort keeps working through an outage and recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from .settings import NatsSettings

T = TypeVar("T")


class BusUnavailable(RuntimeError):
    """NATS could not be reached or did not answer in time."""


class NatsBus:
    """One NATS connection with JetStream key-value access, usable from synchronous code."""

    def __init__(self, settings: NatsSettings) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._buckets: dict[str, KeyValue] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._settings.url

    def publish(self, subject: str, payload: bytes) -> None:
        self._run(self._publish(subject, payload))

    def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value``; returns the bucket's new revision."""
        return self._run(self._kv_put(bucket, key, value))

    def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value and its revision, or None when the key does not exist."""
        return self._run(self._kv_get(bucket, key))

    def kv_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return self._run(self._kv_keys(bucket, prefix))

    def kv_revision(self, bucket: str) -> int:
        """The bucket's latest revision: one call, however many keys it holds."""
        return self._run(self._kv_revision(bucket))

    def kv_delete(self, bucket: str, key: str) -> None:
        self._run(self._kv_delete(bucket, key))

    def subscribe(self, subject: str, callback: Callable[[str, bytes], None]) -> None:
        """Call ``callback(subject, data)`` on the bus thread for every message on ``subject``."""

        async def handler(msg: Msg) -> None:
            callback(msg.subject, msg.data)

        self._run(self._subscribe(subject, handler))

    def flush(self, timeout: float = 5.0) -> None:
        self._run(self._flush(timeout))

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        client, self._client = self._client, None
        future = asyncio.run_coroutine_threadsafe(_shut_down(client), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        self._buckets.clear()

    def __enter__(self) -> NatsBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the loop thread -------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        deadline = self._settings.connect_timeout * 2 + 5
        try:
            return future.result(timeout=deadline)
        except BusUnavailable:
            raise
        except TimeoutError as error:
            future.cancel()
            raise BusUnavailable(f"NATS at {self.url} did not answer in {deadline:.0f}s") from error
        except (nats.errors.Error, OSError) as error:
            raise BusUnavailable(f"NATS at {self.url}: {error!r}") from error

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="nats-bus", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _connection(self) -> Client:
        if self._client is not None and not self._client.is_closed:
            return self._client
        settings = self._settings
        options: dict[str, Any] = {
            "servers": [settings.url],
            "connect_timeout": settings.connect_timeout,
            # One retry at connect time so an outage fails fast with BusUnavailable ...
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 1,
            "allow_reconnect": True,
            "error_cb": _ignore,
            "name": "warm-images",
        }
        if settings.user:
            options.update(user=settings.user, password=settings.password or "")
        if settings.token:
            options["token"] = settings.token
        if settings.tls_ca_file:
            options["tls"] = ssl.create_default_context(cafile=settings.tls_ca_file)
        try:
            client = await nats.connect(**options)
        except Exception as error:
            raise BusUnavailable(f"cannot connect to NATS at {settings.url}: {error!r}") from error
        # ... and, once connected, reconnect forever: a NATS restart must not close the bus.
        client.options["max_reconnect_attempts"] = -1
        self._client = client
        self._buckets.clear()
        return self._client

    async def _bucket(self, name: str) -> KeyValue:
        client = self._client
        if client is not None and client.is_reconnecting:
            # A KV request cannot succeed before the connection is back; waiting out its
            # timeout would only hold up the caller (a pull looking up its pull secrets).
            # Publishes are different: nats-py buffers them across a reconnect.
            raise BusUnavailable(f"NATS at {self.url} is unreachable, reconnecting")
        if name in self._buckets:
            return self._buckets[name]
        jetstream = (await self._connection()).jetstream(timeout=self._settings.connect_timeout)
        try:
            bucket = await jetstream.key_value(name)
        except BucketNotFoundError:
            bucket = await jetstream.create_key_value(bucket=name, history=1)
        self._buckets[name] = bucket
        return bucket

    async def _publish(self, subject: str, payload: bytes) -> None:
        await (await self._connection()).publish(subject, payload)

    async def _flush(self, timeout: float) -> None:
        await (await self._connection()).flush(timeout=int(max(1, timeout)))

    async def _subscribe(self, subject: str, handler: Callable[[Msg], Any]) -> None:
        client = await self._connection()
        await client.subscribe(subject, cb=handler)
        await client.flush()

    async def _kv_put(self, bucket: str, key: str, value: bytes) -> int:
        return int(await (await self._bucket(bucket)).put(key, value))

    async def _kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await (await self._bucket(bucket)).get(key)
        except KeyNotFoundError:
            return None
        return (entry.value or b""), int(entry.revision or 0)

    async def _kv_keys(self, bucket: str, prefix: str) -> list[str]:
        # Not KeyValue.keys(): its push consumer may signal "no more keys" before the first
        # key arrives (a race seen under load), returning too few. A pull consumer cannot:
        # what it holds is counted when it is created, and fetched until none is pending.
        await self._bucket(bucket)  # creates the bucket if missing, as every other access does
        jetstream = (await self._connection()).jetstream(timeout=self._settings.connect_timeout)
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
            while pending:
                for msg in await consumer.fetch(min(pending, 1000), timeout=10):
                    pending = msg.metadata.num_pending
                    if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                        keys.append(msg.subject[len(f"$KV.{bucket}.") :])
        finally:
            await consumer.unsubscribe()
        return sorted(key for key in keys if key.startswith(prefix))

    async def _kv_revision(self, bucket: str) -> int:
        status = await (await self._bucket(bucket)).status()
        return int(status.stream_info.state.last_seq)

    async def _kv_delete(self, bucket: str, key: str) -> None:
        await (await self._bucket(bucket)).delete(key)


async def _shut_down(client: Client | None) -> None:
    """Drain the connection, then end every task nats-py left on the loop, so none is
    destroyed pending when the loop stops."""
    if client is not None and not client.is_closed:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.drain(), 5)
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _ignore(error: Exception) -> None:
    """nats-py logs every reconnect failure through this; outages surface as BusUnavailable."""
