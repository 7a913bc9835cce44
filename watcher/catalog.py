"""The watcher's in-memory catalog and the changes a batch of events makes to it.

Events are applied in batches; each batch yields one :class:`Changes` — which images entered or
left, which nodes joined or left — that the dispatcher turns into KV writes, Celery tasks and
NATS events. Batching is what keeps a burst (the first list of 100,000 pods, a rollout) from
becoming one KV write and one message per object.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.settings import WatchSettings

from .reflector import Changed, Event, Listed
from .workloads import NodeSummary, WorkloadSummary

log = logging.getLogger(__name__)

NODE_KIND = "Node"


@dataclass
class Changes:
    added_images: set[str] = field(default_factory=set)
    removed_images: set[str] = field(default_factory=set)
    touched_images: set[str] = field(default_factory=set)  # users changed: rewrite the entry
    joined_nodes: set[str] = field(default_factory=set)
    left_nodes: set[str] = field(default_factory=set)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # (workload, ref, rule)

    def __bool__(self) -> bool:
        return bool(
            self.added_images
            or self.removed_images
            or self.touched_images
            or self.joined_nodes
            or self.left_nodes
            or self.invalid
        )


class CatalogState:
    def __init__(self, settings: WatchSettings) -> None:
        self._settings = settings
        self.workloads: dict[str, WorkloadSummary] = {}  # "Kind:namespace/name" -> summary
        self.users: dict[str, set[str]] = defaultdict(set)  # image -> workload keys
        self.nodes: dict[str, NodeSummary] = {}
        self.explicit = set(settings.explicit_images)
        self._changes = Changes()

    def images(self) -> list[str]:
        return sorted(set(self.users) | self.explicit)

    def pull_secrets(self, image: str) -> tuple[str, ...]:
        secrets = {
            secret
            for key in self.users.get(image, ())
            for secret in self.workloads[key].pull_secrets
        }
        return tuple(sorted(secrets))

    def apply(self, events: Iterable[Event]) -> Changes:
        for event in events:
            if isinstance(event, Listed):
                self._apply_listed(event)
            else:
                self._apply_changed(event)
        changes, self._changes = self._changes, Changes()
        return changes

    def start_with_explicit(self) -> None:
        self._changes.added_images |= self.explicit

    def _apply_listed(self, event: Listed) -> None:
        if event.kind == NODE_KIND:
            for name in set(self.nodes) - set(event.items):
                self._set_node(name, None)
            for name, summary in event.items.items():
                self._set_node(name, summary)
            return
        prefix = f"{event.kind}:"
        stale = [
            key
            for key, summary in self.workloads.items()
            if key.startswith(prefix) and event.namespace in (None, summary.namespace)
        ]
        for key in stale:
            if key[len(prefix) :] not in event.items:
                self._set_workload(key, None)
        for name, summary in event.items.items():
            self._set_workload(prefix + name, summary)

    def _apply_changed(self, event: Changed) -> None:
        if event.kind == NODE_KIND:
            self._set_node(event.key, event.summary)
        else:
            self._set_workload(f"{event.kind}:{event.key}", event.summary)

    def _set_node(self, name: str, summary: NodeSummary | None) -> None:
        if summary is None:
            if self.nodes.pop(name, None) is not None:
                self._changes.left_nodes.add(name)
                self._changes.joined_nodes.discard(name)
            return
        if name not in self.nodes:
            self._changes.joined_nodes.add(name)
            self._changes.left_nodes.discard(name)
        self.nodes[name] = summary

    def _set_workload(self, key: str, summary: WorkloadSummary | None) -> None:
        if summary is not None and not self._selected(summary):
            summary = None
        old = self.workloads.pop(key, None)
        if summary is not None:
            self.workloads[key] = summary
            self._report_invalid(old, summary)
        before = old.images if old else frozenset()
        after = summary.images if summary else frozenset()
        for image in after - before:
            self._add_user(image, key)
        for image in before - after:
            self._remove_user(image, key)
        if old and summary and old.pull_secrets != summary.pull_secrets:
            self._changes.touched_images |= after

    def _add_user(self, image: str, key: str) -> None:
        users = self.users[image]
        if not users and image not in self.explicit:
            self._changes.added_images.add(image)
            self._changes.removed_images.discard(image)
        users.add(key)
        self._changes.touched_images.add(image)

    def _remove_user(self, image: str, key: str) -> None:
        users = self.users.get(image)
        if users is None:
            return
        users.discard(key)
        if not users:
            del self.users[image]
            if image not in self.explicit:
                self._changes.removed_images.add(image)
                self._changes.added_images.discard(image)
        self._changes.touched_images.add(image)

    def _selected(self, summary: WorkloadSummary) -> bool:
        namespaces = self._settings.namespaces
        if summary.namespace in self._settings.ignore_namespaces:
            return False
        return "*" in namespaces or summary.namespace in namespaces

    def _report_invalid(self, old: WorkloadSummary | None, new: WorkloadSummary) -> None:
        if old is not None and old.invalid == new.invalid:
            return
        for reference, rule in new.invalid:
            log.warning("%s: skipping image %r: %s", new.key, reference, rule)
            self._changes.invalid.append((new.key, reference, rule))
