"""Events as the apiserver serves them: one object, two API versions.

The apiserver stores one Event and converts it for ``core/v1`` and ``events.k8s.io/v1``
(kubernetes/pkg/apis/events/v1/conversion.go): an Event the kubelet writes through core/v1 is
listed and watched through events.k8s.io/v1 too, with the same uid and resourceVersion, and the
reverse. The double stores every Event as core/v1 and converts events.k8s.io/v1 requests and
answers with these functions. Field selectors are converted the same way (``regarding.name`` is
``involvedObject.name``, ``reportingController`` is ``reportingComponent``).
"""

from __future__ import annotations

from typing import Any

GROUP_VERSION = "events.k8s.io/v1"

# core/v1 field -> events.k8s.io/v1 field; the others (metadata, reason, type, action,
# related, eventTime, series, reportingInstance) are the same in both.
_RENAMED = {
    "involvedObject": "regarding",
    "message": "note",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
    "reportingComponent": "reportingController",
}
_BACK = {new: old for old, new in _RENAMED.items()}


def to_events_v1(core: dict[str, Any]) -> dict[str, Any]:
    """A stored (core/v1) Event as events.k8s.io/v1 serves it."""
    converted = {_RENAMED.get(key, key): value for key, value in core.items()}
    converted["apiVersion"] = GROUP_VERSION
    converted["kind"] = "Event"
    return converted


def to_core(event: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event (a create or update body) as the double stores it."""
    converted = {_BACK.get(key, key): value for key, value in event.items()}
    converted["apiVersion"] = "v1"
    converted["kind"] = "Event"
    return converted


def core_field(field: str) -> str:
    """An events.k8s.io/v1 field selector's field, as core/v1 names it."""
    head, dot, rest = field.partition(".")
    return _BACK.get(head, head) + dot + rest
