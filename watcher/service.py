"""The watcher's main loop: reflectors feed one queue; batches of events become dispatches.

Reflector threads only parse and summarize; this loop alone owns the catalog, so it needs no
locks. It waits for every reflector's first list before the first flush, so a restart does not
publish a half-empty catalog. Every replica keeps the catalog; only the leader dispatches (and
mirrors pull secrets, see :mod:`watcher.mirror`; removes startup taints, see :mod:`watcher.gate`;
counts the kubelet's Pulled Events, see :mod:`watcher.kubelet_events`;
resolves tags to digests once per re-warm interval on a thread of its own, see
:mod:`watcher.digests`; sends new images and digests in waves, see :mod:`watcher.waves`), and a
replica that becomes leader starts with a full sync. A periodic
resync lists everything again (catching anything a watch could have missed) and rewrites the
KV catalog.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import Any

from celery import Celery
from kubernetes import client

from tasks.bus import NatsBus
from tasks.probes import HealthServer, serve_health
from tasks.settings import Settings
from worker.credentials import CredentialSource

from . import metrics
from .catalog import CatalogState, Changes
from .catalog_guard import CatalogGuard
from .digests import DigestResolver
from .dispatch import Dispatcher, Sync
from .events import EventRecorder
from .gate import StartupGate
from .kubelet_events import KubeletEvents
from .leader import LeaderElector
from .mirror import SecretMirror
from .queue_depth import QueueDepthSampler
from .reflector import Event, Reflector
from .sources import reflectors
from .waves import Waves

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.2  # seconds to gather a burst of events into one flush
RETRY_FLUSH = 5.0  # seconds between attempts while NATS or the broker is down


class Watcher:
    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        app: Celery,
        bus: NatsBus,
        *,
        identity: str | None = None,
    ) -> None:
        self._settings = settings
        self.mirror = None  # WARM_PULL_SECRETS=false: no mirror, no secret names published
        if settings.runtime.pull_secrets:
            self.mirror = SecretMirror(
                api, settings.pull_secret_namespace, settings.watch.pull_secret_sync_interval
            )
        self.state = CatalogState(
            settings.watch,
            mirror_namespace=self.mirror.namespace if self.mirror else None,
            has_copy=self.mirror.has_copy if self.mirror else lambda source: False,
        )
        credentials = CredentialSource(
            settings.runtime, settings.pull_secret_namespace, client.CoreV1Api(api)
        )
        self.digests = DigestResolver(credentials.for_image, interval=settings.rewarm.interval)
        self.identity = identity or f"{socket.gethostname()}_{os.getpid()}"
        events = EventRecorder(api, self.identity)
        self.waves = Waves(bus, self.state, settings.watch.canary_nodes, events)
        self.dispatcher = Dispatcher(app, bus, self.state, self.digests.digest, self.waves)
        self.catalog_guard = CatalogGuard(bus)
        self._events: queue.Queue[Event] = queue.Queue()
        self.reflectors: list[Reflector] = reflectors(
            api, settings.watch, self._events.put, watch_namespaces=self.state.watches_namespaces
        )
        self.gate = None  # WARM_STARTUP_TAINT empty: no gate, no node is ever patched
        if settings.watch.startup_taint:
            self.gate = StartupGate(
                api,
                bus,
                self.state,
                settings.watch,
                leading=lambda: self.leading,
                identity=self.identity,
            )
        # Set once the first lists are in the catalog: the kubelet's Events are counted from
        # then on, or an Event read before would count its image as not in the catalog.
        self.catalog_ready = threading.Event()
        self.kubelet = None  # WARM_KUBELET_EVENTS=false: no Events watch
        if settings.watch.kubelet_events:
            self.kubelet = KubeletEvents(
                api, bus, self.state, leading=lambda: self.leading and self.catalog_ready.is_set()
            )
        self.elector = None
        if settings.leader.enabled:
            self.elector = LeaderElector(api, settings.leader, self.identity)
        else:
            metrics.LEADER.set(1)  # the only replica: it always dispatches
        self.health: HealthServer | None = None
        self.queue_depths = QueueDepthSampler(app, self._node_names, lambda: self.leading)
        self._started = self._turned = time.monotonic()

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading.is_set()

    def run(self, stop: threading.Event) -> None:
        for reflector in self.reflectors:
            reflector.start()
        self._serve_health()
        elector = self._start_elector(stop)
        threading.Thread(
            target=self.queue_depths.run, args=(stop,), name="queue-depth", daemon=True
        ).start()
        threading.Thread(target=self.digests.run, args=(stop,), name="digests", daemon=True).start()
        if self.kubelet is not None:
            threading.Thread(
                target=self.kubelet.run, args=(stop,), name="kubelet-events", daemon=True
            ).start()
        try:
            self._wait_for_first_lists(stop)
            self._loop(stop)
        finally:
            for reflector in self.reflectors:
                reflector.stop()
            if elector is not None:
                elector.join(timeout=10)  # releases the lease, so a standby takes over now
            if self.health is not None:
                self.health.stop()

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Health: every watch alive and recently heard from, and the main loop turning."""
        now, limit = time.monotonic(), self._settings.watch.stale_after
        stale = [
            reflector.name
            for reflector in self.reflectors
            if not reflector.alive()
            or now - (reflector.last_contact if reflector.synced.is_set() else self._started)
            > limit
        ]
        loop_stuck = now - self._turned > limit
        details = {
            "stale_watches": stale,
            "loop_stuck": loop_stuck,
            "leader": self.leading,
            "images": len(self.state.images),
            "nodes": len(self.state.nodes),
        }
        return not stale and not loop_stuck, details

    def _serve_health(self) -> None:
        port = self._settings.probes.health_port
        if not port:
            return
        self.health = serve_health(port, self.check)

    def _start_elector(self, stop: threading.Event) -> threading.Thread | None:
        if self.elector is None:
            return None
        thread = threading.Thread(target=self.elector.run, args=(stop,), name="leader")
        thread.start()
        return thread

    def _wait_for_first_lists(self, stop: threading.Event) -> None:
        pending = list(self.reflectors)
        while pending and not stop.is_set():
            self._turned = time.monotonic()
            pending = [r for r in pending if not r.synced.wait(0.5)]
        log.info("initial lists done: %d reflectors", len(self.reflectors))

    def _loop(self, stop: threading.Event) -> None:
        owed = Changes()
        was_leading = False
        last_failure = 0.0
        next_resync = time.monotonic() + self._settings.watch.resync_interval
        while not stop.is_set():
            owed.merge(self.state.apply(self._drain()))
            self.catalog_ready.set()
            now = self._turned = time.monotonic()
            if now >= next_resync:
                next_resync = now + self._settings.watch.resync_interval
                self._resync()
            if not self.leading:
                owed, was_leading = Changes(), False  # the leader publishes; this one keeps state
                continue
            if self.catalog_guard.lost(self.dispatcher.revision):
                self.dispatcher.owe(Sync.FULL)
            if not was_leading:
                self.dispatcher.owe(Sync.FULL)
                if self.mirror is not None:
                    self.mirror.resync()
                self.digests.refresh()
                was_leading = True
            if self.mirror is not None and (owed or self.mirror.due):
                # Before the flush: a copy exists before any task or slice names it.
                changed = self.mirror.sync(self.state.referenced_secrets())
                owed.retargeted_images |= self.state.images_using(changed)
            self._follow_digests(owed)
            if self.gate is not None:
                self.gate.check()
            owed.retargeted_images |= self.dispatcher.check_waves()
            if not owed and not self.dispatcher.owes:
                continue
            if last_failure and now - last_failure < RETRY_FLUSH:
                continue
            if self.dispatcher.flush(owed):
                owed, last_failure = Changes(), 0.0
            else:
                last_failure = now

    def _follow_digests(self, owed: Changes) -> None:
        """Hand the resolver the catalog when a round is due, or the images new to it (after
        the mirror: the copies it names exist), and owe the images whose digest it learned or
        saw move."""
        secrets = self.state.catalog_secrets
        if self.digests.due:
            self.digests.offer({image: secrets(image) for image in self.state.images})
        elif owed.added_images:
            added = owed.added_images & set(self.state.images)
            self.digests.add({image: secrets(image) for image in added})
        for image, previous in self.digests.changed().items():
            if image in self.state.images:
                owed.retargeted_images.add(image)
                if previous is not None:  # learning a first digest is no reason to pull
                    owed.moved_images.add(image)

    def _node_names(self) -> list[str]:
        return list(self.state.nodes.copy())  # a copy: the main loop changes it meanwhile

    def _resync(self) -> None:
        log.info("periodic resync: listing every kind again")
        for reflector in self.reflectors:
            reflector.relist()
        self.dispatcher.owe(Sync.REWRITE)

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
