"""Count the kubelet's ``Pulled`` Events in bounded memory: counts, not events.

The leader's Events watch hands every Event to :meth:`KubeletTally.observe`, which keeps:

* counts per image of the catalog and per node class, per node, and apart per image not in
  the catalog, each a few numbers, each keyed set bounded (past the bound, ``(other)``);
* for de-duplication, per Event seen in the last :data:`DEDUPE_WINDOW` to two, the number of
  occurrences counted (a 64-bit hash of its uid and a small int): a re-listed Event, or one
  updated for another reason, counts nothing again; a repeat (its count or series count
  raised by the kubelet's correlator) counts only the new occurrences. Two generations rotated
  every window bound it by time, and a cap by size, whatever the rate.

An Event whose uid is no longer remembered is judged by time: one last seen before the
``floor`` (the window, or the watermark a previous leader counted up to) counts as counted.
Within the window the apiserver keeps Events (``--event-ttl``, an hour by default) a relist
(410 Gone, the hourly resync) therefore counts nothing twice, and a new leader counts only what
its predecessor had not published.

Hits estimate the seconds warming saved with the image's pull time as the workers measured it
(their pull reports on NATS), or, before any worker pulled it, as the kubelet measured it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.images import InvalidImageReference, normalize_image
from tasks.kubelet import OTHER, KubeletCounts, KubeletSummary
from tasks.routing import InvalidNodeName, check_node_name

from . import metrics
from .kubelet_messages import PulledEvent, read_event

DEDUPE_WINDOW = 1800.0  # seconds; Events are remembered for one to two windows
MAX_SEEN = 250_000  # Events remembered per generation, whatever the rate
MAX_IMAGES = 2_000  # images of the catalog counted one by one
MAX_CLASSES = 200
MAX_UNCATALOGED = 100  # images not in the catalog counted one by one
MAX_NODES = 20_000  # past it, a new node is counted only in its image and class
MAX_SERIES = 5_000  # (image, node class) label pairs of the Prometheus metrics
EWMA = 0.3  # weight of a new pull time in an image's estimate


class KubeletTally:
    """Thread-safe: the Events watch calls :meth:`observe`, the publisher :meth:`snapshot`,
    the pull reports :meth:`pulled`."""

    def __init__(
        self,
        in_catalog: Callable[[str], bool],
        node_class: Callable[[str], str],
        *,
        restored: KubeletSummary | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._in_catalog = in_catalog
        self._node_class = node_class
        self._clock = clock
        self._lock = threading.Lock()
        self.summary = restored or KubeletSummary()
        self.nodes: dict[str, KubeletCounts] = {}
        self._seen = _Seen(clock, floor=self.summary.watermark)
        self._kubelet_pull: dict[str, float] = {}  # image -> the pull time the kubelet said
        self._series: set[tuple[str, str]] = set()
        self._events = {o: metrics.KUBELET_EVENTS.labels(o) for o in ("counted", "repeat")}
        self._ignored = metrics.KUBELET_EVENTS.labels("ignored")

    def observe(self, obj: dict[str, Any]) -> None:
        """Count one Event (the Events reflector's summarizer: nothing is kept of it)."""
        event = read_event(obj)
        if event is None:
            self._ignored.inc()
            return
        with self._lock:
            new = self._seen.new(event)
            if new:
                self._count(event, new)
        self._events["counted" if new else "repeat"].inc()

    def pulled(self, image: str, seconds: float) -> None:
        """A worker pulled ``image`` (normalized) in ``seconds``: the estimate for its hits."""
        if seconds <= 0 or not self._in_catalog(image):
            return
        with self._lock:
            known = self.summary.pull_seconds.get(image)
            estimate = seconds if known is None else known + EWMA * (seconds - known)
            if known is not None or len(self.summary.pull_seconds) < MAX_IMAGES:
                self.summary.pull_seconds[image] = estimate

    def restore_nodes(self, nodes: dict[str, KubeletCounts]) -> None:
        with self._lock:
            self.nodes = nodes

    def snapshot(self) -> tuple[bytes, dict[str, bytes]]:
        """The summary's JSON and each node's, as they are now."""
        with self._lock:
            return self.summary.to_json(), {n: c.to_json() for n, c in self.nodes.items()}

    def _count(self, event: PulledEvent, new: int) -> None:
        pull, image = event.pull, _normalized(event.pull.image)
        counts = KubeletCounts(hits=new if pull.hit else 0, misses=0 if pull.hit else new)
        counts.seconds_waited = 0.0 if pull.hit else pull.waited * new
        if not self._in_catalog(image):
            _bounded(self.summary.not_in_catalog, image, MAX_UNCATALOGED).add(counts)
            metrics.KUBELET_UNCATALOGED_PULLS.labels("hit" if pull.hit else "miss").inc(new)
            metrics.KUBELET_UNCATALOGED_WAIT_SECONDS.inc(counts.seconds_waited)
            self._advance(event)
            return
        if pull.hit:
            counts.seconds_saved = new * self._pull_time(image)
        elif pull.pulled:
            self._kubelet_pull[image] = pull.pulled
        node_class = self._node_class(event.node)
        _bounded(self.summary.images, image, MAX_IMAGES).add(counts)
        _bounded(self.summary.classes, node_class, MAX_CLASSES).add(counts)
        if event.node in self.nodes or (len(self.nodes) < MAX_NODES and _is_node(event.node)):
            self.nodes.setdefault(event.node, KubeletCounts()).add(counts)
        self._export(image, node_class, counts)
        self._advance(event)

    def _pull_time(self, image: str) -> float:
        measured = self.summary.pull_seconds.get(image)
        return measured if measured is not None else self._kubelet_pull.get(image, 0.0)

    def _advance(self, event: PulledEvent) -> None:
        if event.last is not None and event.last > self.summary.watermark:
            self.summary.watermark = event.last

    def _export(self, image: str, node_class: str, counts: KubeletCounts) -> None:
        labels = (image, node_class)
        if labels not in self._series and len(self._series) >= MAX_SERIES:
            labels = (OTHER, node_class)
        self._series.add(labels)
        metrics.KUBELET_PULLS.labels(*labels, "hit").inc(counts.hits)
        metrics.KUBELET_PULLS.labels(*labels, "miss").inc(counts.misses)
        metrics.KUBELET_WAIT_SECONDS.labels(*labels).inc(counts.seconds_waited)
        metrics.KUBELET_SAVED_SECONDS.labels(*labels).inc(counts.seconds_saved)


class _Seen:
    """Occurrences counted per Event uid, in two generations of one window each."""

    def __init__(self, clock: Callable[[], float], floor: float) -> None:
        self._clock = clock
        self._floor = floor  # occurrences before it were counted by a previous leader
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._rotated = clock()

    def new(self, event: PulledEvent) -> int:
        """How many of the Event's occurrences are not counted yet; remembers them counted."""
        now = self._clock()
        if now - self._rotated >= DEDUPE_WINDOW or len(self._current) >= MAX_SEEN:
            self._previous, self._current, self._rotated = self._current, {}, now
        key = hash(event.uid)  # 8 bytes of an int instead of a 36-character string
        counted = self._current.get(key)
        if counted is None:
            counted = self._previous.pop(key, None)
        if counted is None:
            counted = self._judged(event, max(self._floor, now - DEDUPE_WINDOW))
        self._current[key] = max(counted, event.occurrences)
        return max(0, event.occurrences - counted)

    @staticmethod
    def _judged(event: PulledEvent, floor: float) -> int:
        """Occurrences of an Event not remembered that count as counted already: all when it
        was last seen before the floor, all but the last when it started before it."""
        if event.last is not None and event.last <= floor:
            return event.occurrences
        if event.first is not None and event.first <= floor:
            return event.occurrences - 1
        return 0


def _bounded(counts: dict[str, KubeletCounts], key: str, limit: int) -> KubeletCounts:
    """The counts of ``key``; past ``limit`` keys, those of ``(other)``."""
    found = counts.get(key)
    if found is None:
        if len(counts) >= limit:
            key = OTHER
        found = counts.setdefault(key, KubeletCounts())
    return found


def _is_node(name: str) -> bool:
    try:
        check_node_name(name)
    except InvalidNodeName:
        return False
    return True


def _normalized(image: str) -> str:
    try:
        return normalize_image(image)
    except InvalidImageReference:
        return image  # counted apart: the catalog holds only valid references
