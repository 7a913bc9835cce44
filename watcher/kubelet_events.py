"""What the kubelet says of each image decision: its ``Pulled`` Events, read and counted.

The kubelet records every image decision as an Event on the pod with reason ``Pulled``: the
image was already present (a warm hit), or it was pulled, with the time the pod waited (a cold
miss). These words are the proof of what warming saved, from the component that decides, not
from this product's own account. This module reads both Event APIs (``core/v1``: ``message``
and ``source.host``; ``events.k8s.io/v1``: ``note`` and ``reportingInstance`` or
``deprecatedSource.host``) and the wording of the kubelet versions in use, and keeps counts,
never events: memory grows with images times nodes, not with the Event rate. (Not wired yet:
the leader's Events watch, the metrics and ``warm-status`` are issue 14's second part.)

Wording, by kubelet version:

* hit: ``Container image "<ref>" already present on machine``; since 1.33 (pulled-image
  credential checks) also ``... already present on machine and can be accessed by the pod``;
* miss: ``Successfully pulled image "<ref>" in <d>`` (up to 1.24), ``... in <d> (<d> including
  waiting)`` (1.25 on), and ``... including waiting). Image size: <n> bytes.`` (1.30 on); the
  durations are Go's (``1m2.5s``, ``850ms``, ``3.2µs``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.images import InvalidImageReference, normalize_image

PULLED = "Pulled"

_HIT = re.compile(r'^Container image "(?P<image>[^"]+)" already present on machine\b')
_MISS = re.compile(
    r'^Successfully pulled image "(?P<image>[^"]+)" in (?P<pulled>[0-9.a-zµ]+)'
    r"(?: \((?P<waited>[0-9.a-zµ]+) including waiting\))?"
)
_GO_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign
    "μs": 1e-6,  # Greek mu: Go accepts both
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One image decision of the kubelet: a hit, or a miss and how long the pod waited."""

    image: str  # as the pod spec wrote it
    hit: bool
    seconds_waited: float = 0.0  # a miss: the pull, including waiting for other pulls


def go_duration(text: str) -> float:
    """Seconds of a Go ``time.Duration`` string, e.g. ``1m2.5s``; ValueError if it is none."""
    position, total = 0, 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return total


def decision_of(message: str) -> Decision | None:
    """The decision a ``Pulled`` message states, or None for wording this does not know."""
    hit = _HIT.match(message)
    if hit:
        return Decision(hit["image"], True)
    miss = _MISS.match(message)
    if miss is None:
        return None
    try:  # the time including waiting is what the pod waited; old kubelets give the pull only
        waited = go_duration(miss["waited"] or miss["pulled"])
    except ValueError:
        return None
    return Decision(miss["image"], False, waited)


def pulled_event(obj: Mapping[str, Any]) -> tuple[str, Decision] | None:
    """(node, decision) of a kubelet ``Pulled`` Event of either API, or None for any other."""
    if obj.get("reason") != PULLED:
        return None
    text = obj.get("note") if "note" in obj else obj.get("message")
    source = obj.get("source") or obj.get("deprecatedSource") or {}
    node = source.get("host") or obj.get("reportingInstance")
    if not isinstance(text, str) or not node:
        return None
    found = decision_of(text)
    return (str(node), found) if found is not None else None


@dataclass(slots=True)
class Tally:
    hits: int = 0
    misses: int = 0
    seconds_waited: float = 0.0

    def add(self, decision: Decision) -> None:
        if decision.hit:
            self.hits += 1
        else:
            self.misses += 1
            self.seconds_waited += decision.seconds_waited

    @property
    def ratio(self) -> float | None:
        """Hits per decision; None before any."""
        total = self.hits + self.misses
        return self.hits / total if total else None

    def to_json(self) -> dict[str, float | int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "seconds_waited": round(self.seconds_waited, 3),
        }


class WarmHits:
    """Counts per image and node class, per node, and apart for images not in the catalog.

    ``in_catalog`` tells whether a normalized reference is in the catalog; ``class_of`` names
    a node's class. References are normalized as the catalog's are (``nginx`` and
    ``docker.io/library/nginx:latest`` are one image); one that cannot be is counted apart.
    """

    def __init__(self, in_catalog: Callable[[str], bool], class_of: Callable[[str], str]) -> None:
        self._in_catalog = in_catalog
        self._class_of = class_of
        self.by_image: dict[tuple[str, str], Tally] = {}  # (image, node class)
        self.by_node: dict[str, Tally] = {}
        self.outside: dict[str, Tally] = {}  # images not in the catalog: what it misses
        self._normalized: dict[str, str] = {}

    def count(self, node: str, decision: Decision) -> None:
        image = self._normalize(decision.image)
        if not self._in_catalog(image):
            self.outside.setdefault(image, Tally()).add(decision)
            return
        self.by_image.setdefault((image, self._class_of(node)), Tally()).add(decision)
        self.by_node.setdefault(node, Tally()).add(decision)

    def _normalize(self, reference: str) -> str:
        found = self._normalized.get(reference)
        if found is None:
            try:
                found = normalize_image(reference)
            except InvalidImageReference:
                found = reference
            self._normalized[reference] = found
        return found
