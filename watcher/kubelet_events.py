"""The leader's watch on the kubelet's ``Pulled`` Events, and what it publishes of them.

Only the leader watches (a standby would hold the same counts for nothing), from the moment its
first lists are in the catalog (an Event read before would count its image as not in it), and
it carries on from the counts and watermark its predecessor published.

Events come in two API versions that are two views of the same objects: the apiserver stores
one Event and converts it for ``core/v1`` and ``events.k8s.io/v1`` alike, so watching both
would read every Event twice. One is watched: ``events.k8s.io/v1`` (GA since 1.19, the API
newer components write through), or ``core/v1`` where it is not served or not allowed. The
kubelet's own core/v1 Events are in either view; the tally de-duplicates by uid anyway, so a
switch of view counts nothing twice. Both are watched with the field selector
``reason=Pulled``, which both support, so the API sends only the image decisions.

Each node class is named by the first of the node-pool labels the node carries (Karpenter,
GKE, EKS, AKS, then the instance type), so the counts read like the pools operators know.

Workers report each pull's duration on NATS (``warm.events.pull.<node>``): the estimate of what
a hit saved. Every :data:`PUBLISH_INTERVAL` the counts that changed are written to the
``warm-kubelet`` bucket (tasks/kubelet.py); a Prometheus scrape reads the counts as they are
(watcher/metrics.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tasks.bus import BusUnavailable, NatsBus
from tasks.kubelet import KubeletStore
from tasks.models import Outcome, PullResult
from tasks.names import PULL_EVENTS

from . import metrics
from .catalog import CatalogState
from .kubelet_messages import PULLED
from .kubelet_tally import KubeletTally, PullTimes
from .reflector import Reflector

log = logging.getLogger(__name__)

KIND = "Event"
FIELD_SELECTOR = f"reason={PULLED}"
PUBLISH_INTERVAL = 5.0  # seconds between two writes of what changed
TICK = 1.0  # seconds between two looks at leadership
CLASS_LABELS = (
    "karpenter.sh/nodepool",
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "node.kubernetes.io/instance-type",
)
NO_CLASS = "none"
NOT_SERVED = (403, 404)


class KubeletEvents:
    def __init__(
        self,
        api: client.ApiClient,
        bus: NatsBus,
        state: CatalogState,
        *,
        leading: Callable[[], bool],
    ) -> None:
        self._api = api
        self._bus = bus
        self._store = KubeletStore(bus)
        self._state = state
        self._leading = leading
        self.pull_times = PullTimes(self._in_catalog)
        self.tally: KubeletTally | None = None
        self.reflector: Reflector | None = None
        self._published: tuple[bytes, dict[str, bytes]] = (b"", {})
        self._next_publish = 0.0
        self._subscribed = False

    def run(self, stop: threading.Event) -> None:
        """Watch while leading, publish what changed; until ``stop``."""
        try:
            while True:  # a turn at once: follow the pull reports from the start
                self._turn()
                if stop.wait(TICK):
                    break
        finally:
            self._step_down()

    def _turn(self) -> None:
        if not self._subscribed:  # NATS may be down at start; its client re-subscribes later
            try:
                self._bus.subscribe(f"{PULL_EVENTS}.>", self._pull_reported)
                self._subscribed = True
            except BusUnavailable as error:
                log.warning("kubelet events: pull reports not followed yet (%s)", error)
        leading = self._leading()
        if leading and self.reflector is None:
            try:
                self._lead()
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("kubelet events: cannot watch Events yet (%s): retrying", error)
        elif not leading and self.reflector is not None:
            self._step_down()
        if self.reflector is not None and time.monotonic() >= self._next_publish:
            self._next_publish = time.monotonic() + PUBLISH_INTERVAL
            self._publish()

    def _lead(self) -> None:
        """Carry on from the published counts; without them (NATS down) try at the next tick,
        rather than count from zero and overwrite them."""
        try:
            restored = self._store.get_summary()
            nodes = self._store.nodes()
        except BusUnavailable as error:
            log.warning("kubelet events: counts not read (%s): retrying", error)
            return
        tally = KubeletTally(self._in_catalog, self._node_class, self.pull_times, restored=restored)
        tally.restore_nodes(nodes)
        self._published = (tally.snapshot()[0], {n: c.to_json() for n, c in nodes.items()})
        self.tally = tally
        self.reflector = Reflector(KIND, self._list_fn(), tally.observe, _ignore).start()
        metrics.KUBELET.source = tally.figures

    def _step_down(self) -> None:
        if self.reflector is not None:
            self.reflector.stop()
            metrics.KUBELET.source = lambda: None
        self.reflector = self.tally = None

    def _list_fn(self) -> Callable[..., Any]:
        """events.k8s.io/v1 when the API serves it to us, else core/v1."""
        events = client.EventsV1Api(self._api).list_event_for_all_namespaces
        try:
            events(limit=1, field_selector=FIELD_SELECTOR, _preload_content=False)
        except ApiException as error:
            if error.status not in NOT_SERVED:
                raise
            log.info("events.k8s.io/v1 not usable (%s): watching core/v1 Events", error.status)
            core = client.CoreV1Api(self._api).list_event_for_all_namespaces
            return partial(core, field_selector=FIELD_SELECTOR)
        return partial(events, field_selector=FIELD_SELECTOR)

    def _publish(self) -> None:
        """Write the summary and the nodes whose counts changed since the last write."""
        assert self.tally is not None
        before, written = self._published
        try:
            self._forget_gone_nodes(self.tally, written)
            summary, nodes = self.tally.snapshot()
            for node, payload in nodes.items():
                if written.get(node) != payload:
                    self._store.put_node(node, payload)
                    written[node] = payload
            if summary != before:
                self._store.put_summary(summary)
                before = summary
        except BusUnavailable as error:
            log.warning("kubelet events: counts not written (%s): next time", error)
        self._published = (before, written)

    def _forget_gone_nodes(self, tally: KubeletTally, written: dict[str, bytes]) -> None:
        """Nodes leave (autoscaling): their counts and keys go with them, so neither grows with
        every node the cluster ever had. Nodes are listed whole: none known, none listed yet."""
        if not self._state.nodes:
            return
        for node in tally.forget_nodes(self._state.nodes):
            self._store.delete_node(node)
            written.pop(node, None)

    def _pull_reported(self, _subject: str, data: bytes) -> None:
        result = PullResult.from_json(data)
        if result.outcome == Outcome.PULLED:
            self.pull_times.reported(result.image, result.seconds)

    def _in_catalog(self, image: str) -> bool:
        return image in self._state.images

    def _node_class(self, node: str) -> str:
        facts = self._state.nodes.get(node)
        labels = dict(facts.labels) if facts is not None else {}
        return next((labels[key] for key in CLASS_LABELS if labels.get(key)), NO_CLASS)


def _ignore(_event: object) -> None:
    """The reflector's sink: the tally has counted each Event already; nothing is kept."""
