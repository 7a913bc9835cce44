"""List, then watch, one Kubernetes resource; never stop, never keep whole objects.

The loop clients get wrong: a watch ends (server timeout, a dropped connection, an apiserver
restart) and a naive watcher silently stops seeing changes. Here a watch that ends is resumed
from the last resourceVersion (kept fresh by bookmarks), a 410 Gone leads to a fresh list, and
API errors are retried with capped exponential backoff. Objects are read as raw JSON and boiled
down right away by a summarizer, so memory holds only what the catalog needs; lists are read in
pages, so 100,000 pods are never one response in memory.

:attr:`Reflector.last_contact` tells a health check when the API last answered, and
:meth:`Reflector.relist` forces a fresh list (the periodic resync).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from . import metrics

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # objects per list page, as kubectl and client-go's reflector use
# A kind the API does not serve (an old cluster) or may not be read (RBAC): after the first
# failure it counts as listed-empty, so the other kinds are not held back; it is retried.
NOT_SERVED = (403, 404)
MIN_WATCH = 0.5  # seconds; a shorter watch that ended cleanly waits this long before the next

Summary = Any  # what a summarizer makes of one object; opaque to the reflector


@dataclass(frozen=True)
class Listed:
    """The whole current state of a resource (after a first list or a re-list)."""

    kind: str
    namespace: str | None
    items: dict[str, Summary]


@dataclass(frozen=True)
class Changed:
    kind: str
    key: str
    summary: Summary | None  # None when the object was deleted


Event = Listed | Changed


class Gone(Exception):
    """The resourceVersion we watch from is too old (HTTP 410): list again."""


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


class Reflector:
    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        summarize: Callable[[dict[str, Any]], Summary],
        sink: Callable[[Event], None],
        *,
        namespace: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._summarize = summarize
        self._sink = sink
        self._namespace = namespace
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{kind}", daemon=True)
        self._response: Any = None
        self._relist = False
        self._events = metrics.WATCH_EVENTS.labels(kind)
        self.resource_version: str | None = None
        self.last_contact = 0.0
        self.synced = threading.Event()

    def start(self) -> Reflector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()
        self._thread.join(timeout=5)

    def relist(self) -> None:
        """End the current watch and list again: catches anything a watch may have missed."""
        self._relist = True
        self._interrupt()

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def name(self) -> str:
        return f"{self.kind} in {self._namespace}" if self._namespace else self.kind

    def _interrupt(self) -> None:
        response = self._response
        if response is not None:
            response.close()  # unblocks the watch read

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None or self._relist:
                    self._relist = False
                    self.resource_version = self._list()
                began = time.monotonic()
                self._watch()
                failures = 0
                if time.monotonic() - began < MIN_WATCH:
                    self._stop.wait(MIN_WATCH)  # a watch that ends at once must not spin
            except Gone:
                log.info("%s: resourceVersion expired (410), listing again", self.kind)
                self.resource_version = None
            except Exception as error:
                if self._stop.is_set():
                    return
                if self._relist:
                    continue  # relist() closed the watch on purpose
                failures += 1
                self._failed(error)
                delay = min(self._max_backoff, 0.5 * 2**failures)
                log.warning("%s: %s; retrying in %.1fs", self.kind, _describe(error), delay)
                self._stop.wait(delay)

    def _failed(self, error: Exception) -> None:
        metrics.API_ERRORS.labels(self.kind).inc()
        status = error.status if isinstance(error, ApiException) else None
        if status == 410:
            self.resource_version = None  # the watch request itself was refused as Gone
        if status == 404:
            self._touch()  # a kind this cluster does not serve: nothing to watch, not stale
        # Forbidden (RBAC) is not touched: blind to a kind, /healthz must say so.
        if status in NOT_SERVED and not self.synced.is_set():
            log.error("%s: cannot be listed (%s); counted as empty", self.kind, status)
            self._sink(Listed(self.kind, self._namespace, {}))
            self.synced.set()

    def _call(self, **kwargs: Any) -> Any:
        if self._namespace is not None:
            kwargs["namespace"] = self._namespace
        return self._list_fn(_preload_content=False, **kwargs)

    def _list(self) -> str:
        items: dict[str, Summary] = {}
        token: str | None = None
        while True:
            page = {"limit": PAGE_SIZE, **({"_continue": token} if token else {})}
            data = json.loads(self._call(**page).data)
            for obj in data.get("items") or ():
                summary = self._summary(obj)
                if summary is not None:
                    items[object_key(obj)] = summary
            self._touch()
            meta = data.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        metrics.RELISTS.labels(self.kind).inc()
        self._events.inc(len(items))
        self._sink(Listed(self.kind, self._namespace, items))
        self.synced.set()
        return str(meta.get("resourceVersion") or "0")

    def _watch(self) -> None:
        self._response = self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=(10, self._watch_timeout + 30),
        )
        self._touch()
        try:
            for line in iter_resp_lines(self._response):
                if self._stop.is_set():
                    return
                if line:
                    self._handle(json.loads(line))
        finally:
            response, self._response = self._response, None
            response.release_conn()

    def _handle(self, event: dict[str, Any]) -> None:
        self._touch()
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind != "BOOKMARK":
            self._events.inc()
        if kind in ("ADDED", "MODIFIED"):
            self._sink(Changed(self.kind, object_key(obj), self._summary(obj)))
        elif kind == "DELETED":
            self._sink(Changed(self.kind, object_key(obj), None))
        if version:
            self.resource_version = str(version)

    def _summary(self, obj: dict[str, Any]) -> Summary:
        """The object's summary; an object too malformed to read counts as absent, so it
        cannot stop the list or the watch that every other object arrives through."""
        try:
            return self._summarize(obj)
        except Exception as error:
            log.warning("%s %s: skipped, cannot be read: %r", self.kind, object_key(obj), error)
            return None

    def _touch(self) -> None:
        self.last_contact = time.monotonic()


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
