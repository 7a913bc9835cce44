"""The watcher's main loop: reflectors feed one queue; batches of events become dispatches.

Reflector threads only parse and summarize; this loop alone owns the catalog, so it needs no
locks. It waits for every reflector's first list before the first flush, so a restart does not
publish a half-empty catalog.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from celery import Celery
from kubernetes import client

from tasks.bus import NatsBus
from tasks.settings import Settings

from .catalog import CatalogState, Changes
from .dispatch import Dispatcher
from .reflector import Event, Reflector
from .sources import reflectors

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.2  # seconds to gather a burst of events into one flush
RETRY_FLUSH = 5.0  # seconds between attempts while NATS or the broker is down


class Watcher:
    def __init__(self, settings: Settings, api: client.ApiClient, app: Celery, bus: NatsBus):
        self.state = CatalogState(settings.watch)
        self.dispatcher = Dispatcher(app, bus, self.state)
        self._events: queue.Queue[Event] = queue.Queue()
        self.reflectors: list[Reflector] = reflectors(
            api, settings.watch.namespaces, self._events.put
        )

    def run(self, stop: threading.Event) -> None:
        for reflector in self.reflectors:
            reflector.start()
        try:
            self._wait_for_first_lists(stop)
            self.state.start_with_explicit()
            self._loop(stop)
        finally:
            for reflector in self.reflectors:
                reflector.stop()

    def _wait_for_first_lists(self, stop: threading.Event) -> None:
        pending = list(self.reflectors)
        while pending and not stop.is_set():
            pending = [r for r in pending if not r.synced.wait(0.5)]
        log.info("initial lists done: %d kinds", len(self.reflectors))

    def _loop(self, stop: threading.Event) -> None:
        owed = Changes()
        last_failure = 0.0
        while not stop.is_set():
            batch = self._drain()
            changes = _merge(owed, self.state.apply(batch))
            if not changes and not self._due_retry(last_failure, owed):
                continue
            if self.dispatcher.flush(changes):
                owed = Changes()
            else:
                owed, last_failure = changes, time.monotonic()

    def _due_retry(self, last_failure: float, owed: Changes) -> bool:
        return last_failure > 0 and time.monotonic() - last_failure > RETRY_FLUSH

    def _drain(self) -> list[Event]:
        try:
            batch = [self._events.get(timeout=BATCH_WINDOW)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + BATCH_WINDOW
        while (left := deadline - time.monotonic()) > 0:
            try:
                batch.append(self._events.get(timeout=left))
            except queue.Empty:
                break
        return batch


def _merge(owed: Changes, new: Changes) -> Changes:
    if not owed:
        return new
    owed.added_images = (owed.added_images - new.removed_images) | new.added_images
    owed.removed_images = (owed.removed_images - new.added_images) | new.removed_images
    owed.touched_images |= new.touched_images
    owed.joined_nodes = (owed.joined_nodes - new.left_nodes) | new.joined_nodes
    owed.left_nodes = (owed.left_nodes - new.joined_nodes) | new.left_nodes
    owed.invalid += new.invalid
    return owed
