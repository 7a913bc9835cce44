"""Read the kubelet's ``Pulled`` Events: which image, on which node, hit or miss, how long.

The kubelet (pkg/kubelet/images/image_manager.go) records every image decision on the pod, in
wordings that changed over the releases; all of them are read here:

* a hit: ``Container image "X" already present on machine`` (1.33+ adds ``and can be accessed
  by the pod``);
* a miss: ``Successfully pulled image "X"`` (before 1.20, no duration), then ``... in 3.2158s``,
  then ``... in 3.2s (4.1s including waiting)`` (1.25+: the pod also waited for other pulls),
  then ``... . Image size: N bytes.`` (1.30+). Durations are Go's (``1m2.5s``, ``512ms``).

The event correlator may prefix ``(combined from similar events): `` and ``kubectl describe``
shows the field path first, so messages are searched, not matched from their start. An Event
is read from either API: core/v1 (``message``, ``source.host``, ``count``) or events.k8s.io/v1
(``note``, ``deprecatedSource.host`` or ``reportingInstance``, ``deprecatedCount``), with the
``series`` of either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .targeting import parse_timestamp

PULLED = "Pulled"  # the reason of both message forms (kubelet events.PulledImage)

_HIT = re.compile(r'Container image "(?P<image>[^"]+)" already present on machine')
_UNIT = "ns|us|µs|μs|ms|h|m|s"  # the longer first: "512ms" is not 512 minutes
_DURATION = rf"(?:[0-9.]+(?:{_UNIT}))+"
_MISS = re.compile(
    rf'Successfully pulled image "(?P<image>[^"]+)"'
    rf"(?: in (?P<pull>{_DURATION})(?: \((?P<wait>{_DURATION}) including waiting\))?)?"
)
_PART = re.compile(rf"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)({_UNIT})")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_UNITS["h"] = 3600.0


@dataclass(frozen=True, slots=True)
class Pull:
    """One image decision of the kubelet, as its message words it."""

    image: str  # as the pod spec names it, not normalized
    hit: bool
    waited: float = 0.0  # seconds the pod waited on a miss (the pull when waiting is not said)
    pulled: float | None = None  # the pull's own seconds, when said


@dataclass(frozen=True, slots=True)
class PulledEvent:
    """What the tally needs of one ``Pulled`` Event."""

    uid: str
    node: str
    occurrences: int  # the Event's count (or series count): a repeat raises it
    first: float | None  # seconds since the epoch
    last: float | None
    pull: Pull


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration (``1h2m3.5s``, ``512ms``), None when it is not one."""
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse_message(message: str) -> Pull | None:
    """The image decision a ``Pulled`` message words, or None for any other message."""
    if found := _HIT.search(message):
        return Pull(found["image"], hit=True)
    if found := _MISS.search(message):
        pulled = go_duration(found["pull"]) if found["pull"] else None
        waited = go_duration(found["wait"]) if found["wait"] else None
        return Pull(found["image"], False, next((s for s in (waited, pulled) if s), 0.0), pulled)
    return None


def read_event(obj: dict[str, Any]) -> PulledEvent | None:
    """A core/v1 or events.k8s.io/v1 Event as a :class:`PulledEvent`; None for any other Event
    and for one that names no node."""
    if obj.get("reason") != PULLED:
        return None
    pull = parse_message(str(obj.get("message") or obj.get("note") or ""))
    source = obj.get("source") or obj.get("deprecatedSource") or {}
    node = source.get("host") or obj.get("reportingInstance")
    if pull is None or not node:
        return None
    meta = obj.get("metadata") or {}
    series = obj.get("series") or {}
    created = meta.get("creationTimestamp")
    first = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp") or obj.get("eventTime")
    last = (
        series.get("lastObservedTime")
        or obj.get("lastTimestamp")
        or obj.get("deprecatedLastTimestamp")
        or obj.get("eventTime")
    )
    count = obj.get("count") or obj.get("deprecatedCount") or 0
    return PulledEvent(
        uid=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        node=str(node),
        occurrences=max(int(series.get("count") or 0), int(count), 1),
        first=parse_timestamp(first or created),
        last=parse_timestamp(last or first or created),
        pull=pull,
    )
