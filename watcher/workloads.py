"""What the watcher keeps of a Kubernetes object: its images, pull secrets and node facts.

Summaries are small frozen records made from the raw JSON as soon as an object arrives, so the
watcher's memory grows with the number of workloads and images, not with object sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.images import InvalidImageReference, normalize_image


@dataclass(frozen=True)
class WorkloadSummary:
    kind: str
    namespace: str
    name: str
    images: frozenset[str]
    invalid: tuple[tuple[str, str], ...] = ()  # (reference, rule broken)
    pull_secrets: tuple[str, ...] = ()  # "namespace/name"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True)
class NodeSummary:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


def pod_spec_of(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    return ((spec.get("template") or {}).get("spec")) or {}


def summarize_workload(kind: str, obj: dict[str, Any]) -> WorkloadSummary:
    """Images of every container and init container; ephemeral debug containers do not count."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    pod_spec = pod_spec_of(kind, obj)
    images: set[str] = set()
    invalid: list[tuple[str, str]] = []
    for container in [*(pod_spec.get("initContainers") or ()), *(pod_spec.get("containers") or ())]:
        reference = (container or {}).get("image")
        if not reference:
            continue
        try:
            images.add(normalize_image(reference))
        except InvalidImageReference as error:
            invalid.append((reference, error.rule))
    secrets = tuple(
        f"{namespace}/{item['name']}"
        for item in pod_spec.get("imagePullSecrets") or ()
        if isinstance(item, dict) and item.get("name")
    )
    return WorkloadSummary(
        kind, namespace, str(meta.get("name")), frozenset(images), tuple(invalid), secrets
    )


def summarize_node(obj: dict[str, Any]) -> NodeSummary:
    meta = obj.get("metadata") or {}
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return NodeSummary(str(meta.get("name")), labels)
