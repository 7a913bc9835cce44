"""What the watcher keeps of a Kubernetes object: its images, placement and pull secrets.

Summaries are small frozen records made from the raw JSON as soon as an object arrives, so the
watcher's memory grows with the number of workloads and images, not with object sizes. The
summarizer also applies every per-object filter (namespace lists, the opt-out/opt-in
annotation, image include/exclude globs) so that what is filtered out is never stored.

One image used by a Deployment, its ReplicaSets and their Pods is one user, not three: an
object owned by a kind the watcher also watches is skipped, since its owner's template carries
the same images. Bare Pods count on their own.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.images import InvalidImageReference, normalize_image
from tasks.settings import WatchSettings

from .targeting import TargetRule, rule_for_pod_spec

WARM_ANNOTATION = "warm-images.io/warm"
# "true": the images hold a new node's startup taint (WARM_STARTUP_GATE_IMAGES=annotated)
GATE_ANNOTATION = "warm-images.io/gate"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# Owner kinds whose own template already carries the owned object's images.
WATCHED_OWNERS = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"}
)


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    kind: str
    namespace: str
    name: str
    images: frozenset[str]
    target: TargetRule
    invalid: tuple[tuple[str, str], ...] = ()  # (reference, rule broken)
    pull_secrets: tuple[str, ...] = ()  # "namespace/name"
    gate: bool = False  # annotated warm-images.io/gate: "true"
    uid: str = ""  # metadata.uid: an Event on the workload names it (watcher/waves.py)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


def pod_spec_of(kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = obj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    if kind == "Pod":
        return spec
    return (spec.get("template") or {}).get("spec") or {}


class Summarizer:
    """Turns raw objects into summaries, applying the watch settings' filters."""

    def __init__(self, settings: WatchSettings) -> None:
        self._settings = settings
        self._all_namespaces = "*" in settings.namespaces
        self._namespaces = frozenset(settings.namespaces)
        self._ignored = frozenset(settings.ignore_namespaces)
        # Many objects share images: normalize and filter each reference once.
        self.reference = functools.lru_cache(maxsize=65_536)(self._reference)

    def workload(self, kind: str, obj: Mapping[str, Any]) -> WorkloadSummary | None:
        """The summary of a workload object, or None when it does not count."""
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if not self._namespace_watched(namespace) or _owned_by_watched_kind(meta):
            return None
        if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
            return None  # a static pod's mirror: it runs on its own node only, by definition
        if not self._opted_in(kind, obj):
            return None
        pod_spec = pod_spec_of(kind, obj)
        images: set[str] = set()
        invalid: list[tuple[str, str]] = []
        for container in (
            *(pod_spec.get("initContainers") or ()),
            *(pod_spec.get("containers") or ()),
        ):
            reference = container.get("image") if isinstance(container, dict) else None
            if not isinstance(reference, str) or not reference:
                continue
            normalized, problem = self.reference(reference)
            if normalized:
                images.add(normalized)
            elif problem:
                invalid.append((reference, problem))
        secrets = tuple(
            f"{namespace}/{item['name']}"
            for item in pod_spec.get("imagePullSecrets") or ()
            if isinstance(item, dict) and item.get("name")
        )
        return WorkloadSummary(
            kind,
            namespace,
            sys.intern(str(meta.get("name"))),
            frozenset(images),
            rule_for_pod_spec(pod_spec),
            tuple(invalid),
            secrets,
            _annotation(kind, obj, GATE_ANNOTATION) == "true",
            str(meta.get("uid") or ""),
        )

    def _reference(self, reference: str) -> tuple[str | None, str | None]:
        """(normalized, None) to keep; (None, rule) when invalid; (None, None) when filtered."""
        try:
            normalized = normalize_image(reference)
        except InvalidImageReference as error:
            return None, error.rule
        if not self.image_allowed(normalized):
            return None, None
        return sys.intern(normalized), None

    def image_allowed(self, normalized: str) -> bool:
        include, exclude = self._settings.include_images, self._settings.exclude_images
        if include and not any(fnmatch.fnmatchcase(normalized, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(normalized, pattern) for pattern in exclude)

    def _namespace_watched(self, namespace: str) -> bool:
        if namespace in self._ignored:
            return False
        return self._all_namespaces or namespace in self._namespaces

    def _opted_in(self, kind: str, obj: Mapping[str, Any]) -> bool:
        value = _annotation(kind, obj, WARM_ANNOTATION)
        if self._settings.opt_in:
            return value == "true"
        return value != "false"


def summarize_namespace(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _owned_by_watched_kind(meta: Mapping[str, Any]) -> bool:
    return any(
        isinstance(owner, dict) and owner.get("kind") in WATCHED_OWNERS
        for owner in meta.get("ownerReferences") or ()
    )


def _annotation(kind: str, obj: Mapping[str, Any], key: str) -> str | None:
    """The annotation ``key`` on the workload, else on its pod template, lowercased."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    if value is None and kind != "Pod":
        spec = obj.get("spec") or {}
        if kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        template_meta = (spec.get("template") or {}).get("metadata") or {}
        value = (template_meta.get("annotations") or {}).get(key)
    return str(value).strip().lower() if value is not None else None
