"""Count the kubelet's ``Pulled`` Events in bounded memory: counts, not events.

The leader's Events watch hands every Event to :meth:`KubeletTally.observe`, which keeps:

* counts per image of the catalog and per node class, per node, and apart per image not in
  the catalog, each a few numbers, each keyed set bounded (past the bound, ``(other)``);
* for de-duplication, per Event seen in the last :data:`DEDUPE_WINDOW` to two, the number of
  occurrences counted (a hash of its uid and the count, in one 64-bit word): a re-listed
  Event, or one updated for another reason, counts nothing again; a repeat (its count or
  series count raised by the kubelet's correlator) counts only the new occurrences. Two
  generations rotated every window bound it by time, and a cap by size, whatever the rate.

An Event whose uid is no longer remembered is judged by time: one last seen before the
``floor`` (the window, or the watermark a previous leader counted up to) counts as counted.
Within the window the apiserver keeps Events (``--event-ttl``, an hour by default) a relist
(410 Gone, the hourly resync) therefore counts nothing twice, and a new leader counts only what
its predecessor had not published.

Hits estimate the seconds warming saved with the image's pull time as the workers measured it
(their pull reports on NATS), or, before any worker pulled it, as the kubelet measured it.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from array import array
from collections.abc import Callable, Container
from typing import Any

from tasks.images import InvalidImageReference, normalize_image
from tasks.kubelet import OTHER, KubeletCounts, KubeletSummary
from tasks.routing import InvalidNodeName, check_node_name

from .kubelet_messages import PulledEvent, read_event
from .metrics import KubeletFigures

DEDUPE_WINDOW = 1800.0  # seconds; Events are remembered for one to two windows
MAX_SEEN = 250_000  # Events remembered per generation, whatever the rate
MAX_IMAGES = 2_000  # images of the catalog counted one by one
MAX_CLASSES = 200
MAX_UNCATALOGED = 100  # images not in the catalog counted one by one
MAX_NODES = 20_000  # past it, a new node is counted only in its image and class
EWMA = 0.3  # weight of a new pull time in an image's estimate
COUNT_BITS = 16
COUNT_MASK = (1 << COUNT_BITS) - 1  # occurrences remembered up to 65,535
TAG_BIT = 1 << 46
TAG_MASK = TAG_BIT - 1


class KubeletTally:
    """Thread-safe: the Events watch calls :meth:`observe`, the publisher :meth:`snapshot`,
    a scrape :meth:`figures`."""

    def __init__(
        self,
        in_catalog: Callable[[str], bool],
        node_class: Callable[[str], str],
        pull_times: PullTimes,
        *,
        restored: KubeletSummary | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._in_catalog = in_catalog
        self._node_class = node_class
        self._pull_times = pull_times
        self._clock = clock
        self._lock = threading.Lock()
        self.summary = restored or KubeletSummary()
        pull_times.seed(self.summary.pull_seconds)
        self.nodes: dict[str, KubeletCounts] = {}
        self._seen = _Seen(clock, floor=self.summary.watermark)
        self._kubelet_pull: dict[str, float] = {}  # image -> the pull time the kubelet said
        self._read = {"counted": 0, "repeat": 0, "ignored": 0}  # Pulled Events, by outcome

    def observe(self, obj: dict[str, Any]) -> None:
        """Count one Event (the Events reflector's summarizer: nothing is kept of it)."""
        event = read_event(obj)
        with self._lock:
            if event is None:
                self._read["ignored"] += 1
                return
            new = self._seen.new(event)
            if new:
                self._count(event, new)
            self._read["counted" if new else "repeat"] += 1

    def restore_nodes(self, nodes: dict[str, KubeletCounts]) -> None:
        with self._lock:
            self.nodes = nodes

    def forget_nodes(self, present: Container[str]) -> list[str]:
        """Drop the counts of the nodes not ``present`` (gone from the cluster); their names."""
        with self._lock:
            gone = [node for node in self.nodes if node not in present]
            for node in gone:
                del self.nodes[node]
        return gone

    def figures(self) -> KubeletFigures:
        """A copy of the counts and of the Events read, for a Prometheus scrape."""
        with self._lock:
            return copy.deepcopy(self.summary), dict(self._read)

    def snapshot(self) -> tuple[bytes, dict[str, bytes]]:
        """The summary's JSON (with the pull times, for the next leader) and each node's."""
        with self._lock:
            self.summary.pull_seconds = self._pull_times.copy()
            return self.summary.to_json(), {n: c.to_json() for n, c in self.nodes.items()}

    def _count(self, event: PulledEvent, new: int) -> None:
        pull, image = event.pull, _normalized(event.pull.image)
        counts = KubeletCounts(hits=new if pull.hit else 0, misses=0 if pull.hit else new)
        counts.seconds_waited = 0.0 if pull.hit else pull.waited * new
        if not self._in_catalog(image):
            _bounded(self.summary.not_in_catalog, image, MAX_UNCATALOGED)[1].add(counts)
            self._advance(event)
            return
        if pull.hit:
            counts.seconds_saved = new * self._pull_time(image)
        elif pull.pulled and (image in self._kubelet_pull or len(self._kubelet_pull) < MAX_IMAGES):
            self._kubelet_pull[image] = pull.pulled
        _bounded(self.summary.images, image, MAX_IMAGES)[1].add(counts)
        _bounded(self.summary.classes, self._node_class(event.node), MAX_CLASSES)[1].add(counts)
        if event.node in self.nodes or (len(self.nodes) < MAX_NODES and _is_node(event.node)):
            self.nodes.setdefault(event.node, KubeletCounts()).add(counts)
        self._advance(event)

    def _pull_time(self, image: str) -> float:
        measured = self._pull_times.get(image)
        return measured if measured is not None else self._kubelet_pull.get(image, 0.0)

    def _advance(self, event: PulledEvent) -> None:
        if event.last is not None and event.last > self.summary.watermark:
            self.summary.watermark = event.last


class PullTimes:
    """Each catalog image's pull time as the workers report it (a moving average), followed on
    every replica whether leading or not, so a hit counted later finds it."""

    def __init__(self, in_catalog: Callable[[str], bool]) -> None:
        self._in_catalog = in_catalog
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    def reported(self, image: str, seconds: float) -> None:
        """A worker pulled ``image`` (normalized) in ``seconds``."""
        if seconds <= 0 or not self._in_catalog(image):
            return
        with self._lock:
            known = self._seconds.get(image)
            if known is None and len(self._seconds) >= MAX_IMAGES:
                return
            self._seconds[image] = seconds if known is None else known + EWMA * (seconds - known)

    def seed(self, published: dict[str, float]) -> None:
        """What a previous leader published, for the images not reported since."""
        with self._lock:
            for image, seconds in published.items():
                if len(self._seconds) < MAX_IMAGES:
                    self._seconds.setdefault(image, seconds)

    def get(self, image: str) -> float | None:
        return self._seconds.get(image)

    def copy(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


class _Seen:
    """Occurrences counted per Event uid, in two generations of one window each."""

    def __init__(self, clock: Callable[[], float], floor: float) -> None:
        self._clock = clock
        self._floor = floor  # occurrences before it were counted by a previous leader
        self._current = _CountTable()
        self._previous = _CountTable()
        self._rotated = clock()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def new(self, event: PulledEvent) -> int:
        """How many of the Event's occurrences are not counted yet; remembers them counted."""
        now = self._clock()
        if now - self._rotated >= DEDUPE_WINDOW or len(self._current) >= MAX_SEEN:
            stale = now - self._rotated >= 2 * DEDUPE_WINDOW  # quiet for two windows: both go
            self._previous = _CountTable() if stale else self._current
            self._current, self._rotated = _CountTable(), now
        tag = _tag(event.uid)
        counted = self._current.get(tag)
        if counted is None:
            counted = self._previous.get(tag)
        if counted is None:
            counted = self._judged(event, max(self._floor, now - DEDUPE_WINDOW))
        self._current.put(tag, max(counted, event.occurrences))
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


class _CountTable:
    """uid tag -> occurrences counted, as one 64-bit word per slot of an open-addressing table
    (the tag's 47 bits above, the count's 16 below): 8 bytes an Event at most half full, and
    no Python object per Event, whose scattered small allocations would pin the heap."""

    def __init__(self, size: int = 1024) -> None:
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def get(self, tag: int) -> int | None:
        slots, mask, index = self._slots, self._mask, tag & self._mask
        while word := slots[index]:
            if word >> COUNT_BITS == tag:
                return word & COUNT_MASK
            index = (index + 1) & mask
        return None

    def put(self, tag: int, count: int) -> None:
        if 2 * (self._used + 1) > len(self._slots):
            self._grow()
        slots, mask, index = self._slots, self._mask, tag & self._mask
        while (word := slots[index]) and word >> COUNT_BITS != tag:
            index = (index + 1) & mask
        self._used += not word
        slots[index] = tag << COUNT_BITS | min(count, COUNT_MASK)

    def _grow(self) -> None:
        words = [word for word in self._slots if word]
        self._slots = array("Q", bytes(16 * len(self._slots)))
        self._mask = len(self._slots) - 1
        self._used = 0
        for word in words:
            self.put(word >> COUNT_BITS, word & COUNT_MASK)


def _tag(uid: str) -> int:
    """47 bits of the uid's hash, never 0 (an empty slot): two of 100,000 Events share one
    with a chance of one in 30,000."""
    return hash(uid) & TAG_MASK | TAG_BIT


def _bounded(counts: dict[str, KubeletCounts], key: str, limit: int) -> tuple[str, KubeletCounts]:
    """The key counted under, and its counts: ``key``, or past ``limit`` keys ``(other)``."""
    if key not in counts and len(counts) >= limit:
        key = OTHER
    return key, counts.setdefault(key, KubeletCounts())


def _is_node(name: str) -> bool:
    try:
        check_node_name(name)
    except InvalidNodeName:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _normalized(image: str) -> str:
    try:
        return normalize_image(image)
    except InvalidImageReference:
        return image  # counted apart: the catalog holds only valid references
