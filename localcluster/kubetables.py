"""Server-side printing: objects as the meta.k8s.io/v1 Table that ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the Table's
rows; an apiserver that answered with a plain list would make kubectl print "No resources found".
The columns follow the apiserver's own printers for the kinds the product watches (``-o wide``
shows the priority-1 ones); any other kind gets NAME and AGE, like a CRD without printer columns.
The double runs no controllers, so status columns show what the objects hold (READY 0/3).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

Obj = Mapping[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def table(
    objects: list[Obj], kind: str | None, resource_version: str, include: str
) -> dict[str, Any]:
    """A Table of ``objects`` of ``kind``; ``include`` is the request's includeObject."""
    columns = [*_COMMON_HEAD, *_COLUMNS.get(kind or "", ()), _AGE, *_AFTER_AGE.get(kind or "", ())]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": name,
                "type": kind_,
                "format": "name" if name == "Name" else "",
                "description": name,
                "priority": priority,
            }
            for name, kind_, priority, _ in columns
        ],
        "rows": [
            {"cells": [cell(obj) for *_, cell in columns], "object": _row_object(obj, include)}
            for obj in objects
        ],
    }


def _row_object(obj: Obj, include: str) -> Any:
    if include == "Object":
        return obj
    if include == "None":
        return None
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


def age(obj: Obj, now: datetime.datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    created = _meta(obj).get("creationTimestamp")
    if not created:
        return "<unknown>"
    since = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - since).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _pod_spec(obj: Obj) -> Mapping[str, Any]:
    spec = _spec(obj)
    if obj.get("kind") == "Pod":
        return spec
    if obj.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def _containers(obj: Obj) -> str:
    return ",".join(str(c.get("name", "")) for c in _pod_spec(obj).get("containers") or [])


def _images(obj: Obj) -> str:
    return ",".join(str(c.get("image", "")) for c in _pod_spec(obj).get("containers") or [])


def _node_status(obj: Obj) -> str:
    ready = [c for c in _status(obj).get("conditions") or [] if c.get("type") == "Ready"]
    state = "Unknown" if not ready else "Ready" if ready[0].get("status") == "True" else "NotReady"
    return f"{state},SchedulingDisabled" if _spec(obj).get("unschedulable") else state


def _node_info(obj: Obj) -> Mapping[str, Any]:
    return _status(obj).get("nodeInfo") or {}


def _roles(obj: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    labels = _meta(obj).get("labels") or {}
    return ",".join(sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))) or "<none>"


def _pod_ready(obj: Obj) -> str:
    statuses = _status(obj).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{len(_spec(obj).get('containers') or [])}"


def _replicas(obj: Obj) -> str:
    return f"{_status(obj).get('readyReplicas', 0)}/{_spec(obj).get('replicas', 1)}"


_COMMON_HEAD: tuple[Column, ...] = (("Name", "string", 0, lambda o: _meta(o).get("name", "")),)
_AGE: Column = ("Age", "string", 0, age)
_WORKLOAD_WIDE: tuple[Column, ...] = (
    ("Containers", "string", 1, _containers),
    ("Images", "string", 1, _images),
)
_COLUMNS: dict[str, tuple[Column, ...]] = {
    "Node": (("Status", "string", 0, _node_status), ("Roles", "string", 0, _roles)),
    "Pod": (
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, lambda o: _status(o).get("phase", "Pending")),
        ("Restarts", "string", 0, lambda o: "0"),
    ),
    "Deployment": (
        ("Ready", "string", 0, _replicas),
        ("Up-to-date", "integer", 0, lambda o: _status(o).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: _status(o).get("availableReplicas", 0)),
    ),
    "StatefulSet": (("Ready", "string", 0, _replicas),),
    "ReplicaSet": (
        ("Desired", "integer", 0, lambda o: _spec(o).get("replicas", 1)),
        ("Current", "integer", 0, lambda o: _status(o).get("replicas", 0)),
        ("Ready", "integer", 0, lambda o: _status(o).get("readyReplicas", 0)),
    ),
    "DaemonSet": (
        ("Desired", "integer", 0, lambda o: _status(o).get("desiredNumberScheduled", 0)),
        ("Ready", "integer", 0, lambda o: _status(o).get("numberReady", 0)),
    ),
    "Job": (
        ("Status", "string", 0, lambda o: "Complete" if _status(o).get("succeeded") else "Running"),
        (
            "Completions",
            "string",
            0,
            lambda o: f"{_status(o).get('succeeded', 0)}/{_spec(o).get('completions', 1)}",
        ),
    ),
    "CronJob": (
        ("Schedule", "string", 0, lambda o: _spec(o).get("schedule", "")),
        ("Suspend", "boolean", 0, lambda o: bool(_spec(o).get("suspend", False))),
    ),
}
_AFTER_AGE: dict[str, tuple[Column, ...]] = {
    "Node": (("Version", "string", 0, lambda o: _node_info(o).get("kubeletVersion", "")),),
    "Pod": (("Node", "string", 1, lambda o: _spec(o).get("nodeName") or "<none>"),),
    **{
        kind: _WORKLOAD_WIDE
        for kind in ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job", "CronJob")
    },
}
