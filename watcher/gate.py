"""The warm-before-schedule gate: a new node's startup taint comes off once its images are warm.

Pods that land on a node before its images are there pay the cold pulls this product exists to
avoid. Karpenter (``startupTaints``), cluster-autoscaler (taints with the
``startup-taint.cluster-autoscaler.kubernetes.io/`` prefix) and node-readiness-controller let a
node join with a taint that something removes once the node is ready for work. Here the
watcher removes it (``WARM_STARTUP_TAINT``), so no node needs write access to Node objects:

* as soon as every gating image of the node's slice (all of it, or with
  ``WARM_STARTUP_GATE_IMAGES=annotated`` only the images of workloads annotated
  ``warm-images.io/gate: "true"``) is present or has failed permanently, as the node's status
  record says for the slice it answers (the record names only what is not warm);
* or at the deadline (``WARM_STARTUP_TAINT_DEADLINE`` after the node's creation, or after the
  watcher first saw it), so a broken registry never keeps a node out of service.

The removal is a JSON patch guarded by the node's resourceVersion (a ``test`` op), so it never
drops a taint an autoscaler added meanwhile. Only the leader patches, and only nodes that carry
the taint. An Event on the Node says why; a histogram records the time from creation to untaint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore, UnknownNode
from tasks.models import Outcome
from tasks.settings import WatchSettings
from tasks.status import ImageStatus, StatusStore

from . import metrics
from .catalog import CatalogState
from .events import MESSAGE_LIMIT, EventRecorder, shortened

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0  # seconds between two looks at the tainted nodes' status records
EVENT_NAMESPACE = "default"  # where the kubelet and node controllers put a Node's Events
STATE_LIMIT = 160  # characters of an image's state in a message, so that every image is named
# The node changed between our read and our patch (409), the guard's test failed (422), or
# the node is gone (404): look again at the next check.
RACED = (404, 409, 422)


class Reason(StrEnum):
    WARM = "warm"  # every gating image present
    FAILURES = "failures"  # every gating image present or failed permanently, some failed
    DEADLINE = "deadline"  # the deadline passed first


EVENT_REASONS = {
    Reason.WARM: ("ImagesWarm", "Normal"),
    Reason.FAILURES: ("ImagesFailed", "Warning"),
    Reason.DEADLINE: ("WarmDeadline", "Warning"),
}


@dataclass(frozen=True)
class Verdict:
    """Why a node's taint comes off, and what of its gating images was not warm then."""

    reason: Reason
    gating: int  # how many images gate the node
    not_warm: dict[str, str] = field(default_factory=dict)  # image -> "failed: <reason>" etc.
    note: str = ""  # why the images' state is unknown, at a deadline

    def message(self, taint: str, seconds: float) -> str:
        head = f"removed startup taint {taint} after {seconds:.0f}s: "
        if self.reason is Reason.WARM:
            text = f"all {self.gating} gating images are present"
        elif self.reason is Reason.FAILURES:
            text = (
                f"{self.gating - len(self.not_warm)} of {self.gating} gating images present, "
                f"{len(self.not_warm)} failed permanently: {self._listed()}"
            )
        else:
            text = "deadline passed"
            if self.not_warm:
                text += f", {len(self.not_warm)} of {self.gating} gating images not warm: "
                text += self._listed()
            text += f" ({self.note})" if self.note else ""
        return shortened(head + text, MESSAGE_LIMIT)

    def _listed(self) -> str:
        return ", ".join(
            f"{image} ({_elided(state, STATE_LIMIT)})"
            for image, state in sorted(self.not_warm.items())
        )


class StartupGate:
    """Run by the watcher's main loop, on the leader only: :meth:`check` is cheap to call often."""

    def __init__(
        self,
        api: client.ApiClient,
        bus: NatsBus,
        state: CatalogState,
        settings: WatchSettings,
        *,
        leading: Callable[[], bool],
        identity: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.taint = settings.startup_taint
        self._deadline = settings.startup_taint_deadline
        self._annotated = settings.startup_gate_images == "annotated"
        self._core = client.CoreV1Api(api)
        self._catalog = CatalogStore(bus)
        self._status = StatusStore(bus)
        self._state = state
        self._leading = leading
        self._events = EventRecorder(api, identity)
        self._clock = clock  # wall clock: deadlines run from the node's creationTimestamp
        self._first_seen: dict[str, float] = {}
        self._next_check = 0.0

    def check(self) -> None:
        """Untaint every tainted node whose gating images are settled or whose deadline passed."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        tainted = {name: f for name, f in self._state.nodes.items() if f.startup_tainted}
        for name in set(self._first_seen) - set(tainted):
            del self._first_seen[name]
        if not tainted:
            return
        gate_images = self._state.gate_images() if self._annotated else None
        for name, facts in sorted(tainted.items()):
            first_seen = self._first_seen.setdefault(name, now)
            since = facts.created if facts.created is not None else first_seen
            verdict = self._verdict(name, gate_images, now - since >= self._deadline)
            if verdict is not None and self._leading():
                self._untaint(name, verdict, max(0.0, now - since))

    def _verdict(self, node: str, gate_images: set[str] | None, overdue: bool) -> Verdict | None:
        try:
            node_slice, revision = self._catalog.get_slice(node)
            status = self._status.get(node)
        except (UnknownNode, BusUnavailable) as error:
            return Verdict(Reason.DEADLINE, 0, note=f"status unknown: {error}") if overdue else None
        images = [item.image for item in node_slice.images]
        if gate_images is not None:
            images = [image for image in images if image in gate_images]
        named = {image: status.images[image] for image in images if image in status.images}
        # A record older than the node's slice cannot vouch for the images added since.
        answered = (status.last_rewarm_revision or 0) >= revision
        settled = not images or (
            answered and all(s.outcome == Outcome.FAILED.value for s in named.values())
        )
        if settled:
            if named:
                return Verdict(Reason.FAILURES, len(images), _described(named))
            return Verdict(Reason.WARM, len(images))
        if not overdue:
            return None
        if not status.reported:
            return Verdict(Reason.DEADLINE, len(images), dict.fromkeys(images, "not reported"))
        stale = "" if answered else "the node's status record is older than its slice"
        return Verdict(Reason.DEADLINE, len(images), _described(named), note=stale)

    def _untaint(self, node: str, verdict: Verdict, seconds: float) -> None:
        """Remove the taint with a JSON patch that applies only to the version of the node read
        here; a node that changed meanwhile is looked at again at the next check."""
        try:
            found = self._core.read_node(node)
            meta = found.metadata or client.V1ObjectMeta()
            taints = (found.spec.taints if found.spec else None) or []
            index = next((i for i, taint in enumerate(taints) if taint.key == self.taint), None)
            if index is None:
                return  # gone already (removed by hand, or by a leader before us)
            patch: list[dict[str, Any]] = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
                {"op": "remove", "path": f"/spec/taints/{index}"},
            ]
            self._core.patch_node(node, patch)
        except ApiException as error:
            if error.status in RACED:
                log.info("node %s changed while untainting (%s): next check", node, error.status)
            else:
                log.warning("node %s: taint %s not removed: %s", node, self.taint, error.reason)
            return
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("node %s: taint %s not removed: %s", node, self.taint, error)
            return
        del self._first_seen[node]
        metrics.UNTAINT_SECONDS.labels(verdict.reason.value).observe(seconds)
        message = verdict.message(self.taint, seconds)
        log.info("node %s: %s", node, message)
        self._record_event(node, meta.uid, verdict, message)

    def _record_event(self, node: str, uid: str | None, verdict: Verdict, message: str) -> None:
        reason, kind = EVENT_REASONS[verdict.reason]
        involved = client.V1ObjectReference(api_version="v1", kind="Node", name=node, uid=uid)
        self._events.record(EVENT_NAMESPACE, involved, reason, message, kind)


def _described(named: dict[str, ImageStatus]) -> dict[str, str]:
    return {
        image: f"{status.outcome}: {status.reason}" if status.reason else status.outcome
        for image, status in named.items()
    }


def _elided(text: str, limit: int) -> str:
    """``text`` cut in the middle: an error chain says what failed first and why last."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1) :]
