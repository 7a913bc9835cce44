"""Waves: a new image, or a new digest of one, reaches a few canary nodes before the fleet.

Sent to 5,000 nodes at once, a broken image (a manifest whose layer the registry lost, a
platform missing from an index) costs 5,000 failed pulls, and a good one reaches a cold
pull-through cache 5,000 times at once. So the leader sends it to ``WARM_CANARY_NODES`` nodes
first (default 2; 0 turns waves off), and to the other target nodes once a canary holds it:

* **Start.** An image that enters the catalog after the leader's first publish (the images in
  use when it starts already run somewhere), or whose tag the leader resolves to a new digest
  (:mod:`watcher.digests`), starts a wave. A new digest replaces the image's wave, a stopped
  one too: a fixed image starts over.
* **Canaries.** Among the image's target nodes, chosen the same way by every leader: each class
  of equivalent nodes orders its nodes by a hash of (image, node), so different images load
  different nodes; classes take turns, so the canaries spread over pools (an arm64 and an amd64
  pool each get one); and a node whose worker has answered its current slice (its status record
  names that slice) comes before one that has not (a worker that is down would hold the wave).
* **Hold.** The other target nodes' slices leave the image out and name it under ``held``
  instead (:class:`tasks.models.ClassSlice`): their re-warms, reconciles and pull tasks pull
  none of it, and ``warm-status`` shows it held. The canaries' slices list it, and they get
  it as any new image (a pull task, or a re-warm).
* **Release.** Once a canary reports the image pulled or present (its pull events, for the
  wave's digest), or its status record answers its current slice without naming the image
  (after a re-warm: what a leader that missed the events reads), the canary holds it: the hold
  is lifted and the other nodes get it as any new image (tasks, then re-warms), from a
  pull-through cache the canary warmed.
* **Stop.** A canary that reports the image failed permanently (the worker's classification:
  a missing manifest or layer, no access; not a transient error that ran out of retries), in
  a pull event or in its status record, stops the wave: the image stays held, the wave is
  stored as stopped for ``warm-status``, and each workload using the image gets a Warning
  Event saying which canary failed and why. So a broken image costs at most
  ``WARM_CANARY_NODES`` pulls fleet-wide.
* **Slow or gone canaries.** A canary still pulling or retrying holds the wave as long as it
  takes: slowness is no failure. A canary that leaves (node deleted) or is no longer a target is
  replaced by the next node in the order while the wave waits; a stopped wave stays stopped.
  A canary whose worker is down holds the wave until it is back or its node goes: canaries are
  picked among workers that answer for that reason.

The waves live in the leader's memory and in the catalog bucket (``waves.<hash>``), where a
leader that takes over finds them; a wave that reached the fleet is deleted, so the bucket holds
only the few images under way. An image that enters while no watcher leads is sent to all at
once.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from kubernetes import client

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.errors import gave_up
from tasks.models import Outcome, PullResult, Wave, WaveState
from tasks.names import PULL_EVENTS
from tasks.status import NodeStatus, StatusStore

from . import metrics
from .catalog import CatalogState, Changes
from .events import EventRecorder
from .slices import SliceIndex

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two looks at what the canaries reported
HEARD_LIMIT = 10_000  # canaries' results kept between two checks (a replica that stopped leading)
HEALTH_PROBES = 10  # status records read, at most, to find canaries whose worker answers
EVENT_WORKLOADS = 20  # workloads of a stopped image that get an Event
STOPPED_REASON = "ImageWaveStopped"
API_VERSIONS = {
    "Pod": "v1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}

PointerOf = Callable[[str], str | None]  # node -> the hash of the slice its pointer names
DigestOf = Callable[[str], str | None]


class Waves:
    """The leader's waves; the dispatcher asks which images are held from which nodes."""

    def __init__(
        self,
        bus: NatsBus,
        state: CatalogState,
        size: int,
        events: EventRecorder | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.size = size
        self._catalog = CatalogStore(bus)
        self._status = StatusStore(bus)
        self._state = state
        self._events = events
        self._clock = clock
        self._waves: dict[str, Wave] = {}
        self._canary_of: dict[str, set[str]] = {}  # node -> the images it is a canary of
        self._waiting_on: dict[str, set[str]] = {}  # the same, of the waves still waiting
        self._next_check = 0.0
        self._bus = bus
        self._listening = False
        self._heard: collections.deque[PullResult] = collections.deque(maxlen=HEARD_LIMIT)

    def held(self) -> set[str]:
        """The images held back from every target node but their canaries."""
        return set(self._waves)

    def canary_images(self, node: str) -> set[str]:
        return self._canary_of.get(node, set())

    def plan(
        self,
        changes: Changes,
        index: SliceIndex,
        pointer_of: PointerOf,
        digest_of: DigestOf,
        *,
        first: bool,
        reload: bool,
    ) -> set[str]:
        """Bring the waves up to date with a flush's ``changes`` (``index`` already updated);
        return the images whose hold changed for some node. ``first``: the leader's first
        publish, whose images are the baseline; ``reload``: read the stored waves again (a
        full sync: another leader may have moved them on)."""
        if reload:
            self._reload()
        if self.size and not self._listening:  # before any canary is sent the image
            self._bus.subscribe(f"{PULL_EVENTS}.>", self._hear)
            self._listening = True
        changed = set()
        for image in [image for image in self._waves if image not in self._state.images]:
            self._end(image)
            changed.add(image)
        fresh = set(changes.moved_images) | (set() if first else changes.added_images)
        for image, wave in list(self._waves.items()):
            digest = digest_of(image)
            if digest and wave.digest and digest != wave.digest:
                fresh.add(image)  # moved while no leader looked, or again
            elif digest and not wave.digest:
                self._put(replace(wave, digest=digest))  # learned: the same content
        for image in sorted(fresh & set(self._state.images)) if self.size else ():
            self._start(image, digest_of(image), index, pointer_of)
            changed.add(image)
        for image, wave in list(self._waves.items()):
            if wave.state is WaveState.CANARY and self._top_up(wave, index, pointer_of):
                changed.add(image)
        self._count()
        return changed

    def check(self, pointer_of: PointerOf) -> set[str]:
        """Look at the canaries' status records (at most every CHECK_INTERVAL): stop the waves
        a canary failed, and return the images a canary holds, released to every node."""
        now = time.monotonic()
        if now < self._next_check:
            return set()
        self._next_check = now + CHECK_INTERVAL
        heard: dict[str, list[PullResult]] = {}
        while self._heard:
            result = self._heard.popleft()
            heard.setdefault(result.image, []).append(result)
        waiting = [w for w in self._waves.values() if w.state is WaveState.CANARY]
        if not waiting:
            return set()
        try:
            statuses = {node: self._status.get(node) for w in waiting for node in w.canaries}
            released = {
                w.image
                for w in waiting
                if self._settle(w, heard.get(w.image, []), statuses, pointer_of)
            }
        except BusUnavailable as error:
            log.warning("waves not checked, next time: %s", error)
            return set()
        self._count()
        return released

    # --- transitions ------------------------------------------------------------------------

    def _start(
        self, image: str, digest: str | None, index: SliceIndex, pointer_of: PointerOf
    ) -> None:
        canaries = self._choose(image, self.size, set(), index, pointer_of)
        wave = Wave(image, digest, tuple(canaries), WaveState.CANARY, round(self._clock(), 3))
        self._put(wave)
        metrics.WAVE_TRANSITIONS.labels("started").inc()
        log.info("wave of %s (%s): canaries %s", image, digest or "digest unknown", canaries)

    def _top_up(self, wave: Wave, index: SliceIndex, pointer_of: PointerOf) -> bool:
        """Replace canaries that left or no longer take the image; True if any changed."""
        targets = set().union(*index.target_classes(wave.image))
        kept = [node for node in wave.canaries if node in targets]
        wanted = min(self.size, len(targets))
        if len(kept) == len(wave.canaries) and len(kept) >= wanted:
            return False
        more = self._choose(wave.image, wanted - len(kept), set(kept), index, pointer_of)
        canaries = (*kept, *more)
        if canaries == wave.canaries:
            return False
        log.info("wave of %s: canaries %s replace %s", wave.image, canaries, wave.canaries)
        self._put(replace(wave, canaries=canaries))
        return True

    def _hear(self, _subject: str, data: bytes) -> None:
        """A pull result (NATS thread): kept if a canary reports on its waiting wave's image."""
        try:
            result = PullResult.from_json(data)
        except (ValueError, KeyError, TypeError):
            return
        if result.image in self._waiting_on.get(result.node, ()):
            self._heard.append(result)

    def _settle(
        self,
        wave: Wave,
        heard: list[PullResult],
        statuses: dict[str, NodeStatus],
        pointer_of: PointerOf,
    ) -> bool:
        """Stop ``wave`` if a canary failed for good; True when a canary holds the image."""
        present, failure = False, None
        for result in heard:
            if result.node not in wave.canaries or _other_digest(wave, result):
                continue
            if result.outcome in (Outcome.PULLED, Outcome.PRESENT):
                present = True
            elif result.outcome is Outcome.FAILED and not gave_up(result.reason):
                failure = failure or (result.node, result.reason)
        for node in wave.canaries:
            status, pointer = statuses[node], pointer_of(node)
            if not pointer or status.slice != pointer:
                continue  # it has not answered the slice that lists the image yet
            named = status.images.get(wave.image)
            if named is None:
                present = True
            elif named.outcome == Outcome.FAILED.value and not gave_up(named.reason):
                failure = failure or (node, named.reason)
        if failure is not None:
            self._stop(wave, *failure)
            return False
        if present:
            self._end(wave.image)
            metrics.WAVE_TRANSITIONS.labels("released").inc()
            metrics.WAVE_CANARY_SECONDS.observe(max(0.0, self._clock() - wave.started))
            log.info("wave of %s: a canary holds it, sent to every node", wave.image)
        return present

    def _stop(self, wave: Wave, node: str, reason: str) -> None:
        stopped = replace(wave, state=WaveState.STOPPED, node=node, reason=reason)
        self._put(stopped)
        metrics.WAVE_TRANSITIONS.labels("stopped").inc()
        message = (
            f"image {wave.image} ({wave.digest or 'digest unknown'}) held back from the other "
            f"nodes: canary {node} failed: {reason}. A new digest of the image starts a new wave."
        )
        log.warning("wave stopped: %s", message)
        self._record_events(wave.image, message)

    def _record_events(self, image: str, message: str) -> None:
        use = self._state.images.get(image)
        if self._events is None or use is None:
            return
        for key in sorted(use.users)[:EVENT_WORKLOADS]:
            namespace, kind, name = key.split("/", 2)
            summary = self._state.workloads.get(key)
            involved = client.V1ObjectReference(
                api_version=API_VERSIONS.get(kind, "v1"),
                kind=kind,
                name=name,
                namespace=namespace,
                uid=(summary.uid if summary else "") or None,
            )
            self._events.record(namespace, involved, STOPPED_REASON, message, "Warning")

    # --- canaries ---------------------------------------------------------------------------

    def _choose(
        self, image: str, count: int, taken: set[str], index: SliceIndex, pointer_of: PointerOf
    ) -> list[str]:
        """``count`` canaries for ``image`` among its target nodes not ``taken``: classes in
        turn, each in its hash order, nodes whose worker answers first."""
        if count <= 0:
            return []

        def rank(node: str) -> bytes:
            return hashlib.sha256(f"{image}\0{node}".encode()).digest()

        orders = [sorted(nodes - taken, key=rank) for nodes in index.target_classes(image)]
        orders = sorted((order for order in orders if order), key=lambda order: rank(order[0]))
        candidates = [n for turn in itertools.zip_longest(*orders) for n in turn if n is not None]
        probed = candidates[:HEALTH_PROBES]
        healthy = [node for node in probed if self._answers(node, pointer_of)]
        rest = [node for node in candidates if node not in healthy]
        return (healthy + rest)[:count]

    def _answers(self, node: str, pointer_of: PointerOf) -> bool:
        """Whether the node's worker has answered the slice its pointer names now."""
        pointer = pointer_of(node)
        return bool(pointer) and self._status.get(node).slice == pointer

    # --- the stored waves -------------------------------------------------------------------

    def _reload(self) -> None:
        """The stored waves, another leader's news included; a wave held here and not stored
        (NATS lost the bucket) is stored again: releasing it would send a broken image to
        every node. One another leader released is released again once its canary's record
        answers the full sync's re-warm."""
        stored = self._catalog.waves()
        if not self.size:
            for image in stored:
                self._catalog.delete_wave(image)  # waves turned off: release what was held
            self._waves = {}
        else:
            lost = [wave for image, wave in self._waves.items() if image not in stored]
            self._waves = stored
            for wave in lost:
                self._put(wave)
        self._index_canaries()

    def _put(self, wave: Wave) -> None:
        self._catalog.put_wave(wave)
        self._waves[wave.image] = wave
        self._index_canaries()

    def _end(self, image: str) -> None:
        self._catalog.delete_wave(image)
        del self._waves[image]
        self._index_canaries()

    def _index_canaries(self) -> None:
        canary_of: dict[str, set[str]] = {}
        waiting_on: dict[str, set[str]] = {}
        for wave in self._waves.values():
            for node in wave.canaries:
                canary_of.setdefault(node, set()).add(wave.image)
                if wave.state is WaveState.CANARY:
                    waiting_on.setdefault(node, set()).add(wave.image)
        self._canary_of, self._waiting_on = canary_of, waiting_on  # whole: read by NATS thread

    def _count(self) -> None:
        states = [wave.state for wave in self._waves.values()]
        for state in WaveState:
            metrics.WAVES.labels(state.value).set(states.count(state))


def _other_digest(wave: Wave, result: PullResult) -> bool:
    """Whether ``result`` is of another digest than the wave's (a pull of the previous one
    that ended late); unknown on either side counts as the same."""
    return bool(wave.digest and result.digest and result.digest != wave.digest)
