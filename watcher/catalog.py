"""The watcher's in-memory catalog and the changes a batch of events makes to it.

Events are applied in batches; each batch yields one :class:`Changes` (images that entered,
left, were touched or re-targeted; nodes that joined, left or changed) that the dispatcher
turns into KV writes, Celery tasks and NATS events. Batching is what keeps a burst (the first
list of 100,000 pods, a rollout) from becoming one KV write and one message per object.

Per image the state counts its users' placement rules and pull secrets, so a change costs the
same whether one pod or 100,000 use the image. An image whose last user leaves lingers for the
grace period with its last placement, so a rollout (old ReplicaSet gone, new one coming) or a
CronJob's Job coming and going does not drop it from nodes and pull it again.

Pull secrets are counted by their source names ("namespace/name"), which only the watcher
sees; what it publishes names the copies it mirrors into the mirror namespace instead
(:meth:`CatalogState.catalog_secrets`), the only Secrets a node may read.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from tasks.images import InvalidImageReference, normalize_image
from tasks.models import InvalidImage
from tasks.names import mirrored_secret_name
from tasks.settings import WatchSettings

from .reflector import Changed, Event, Listed
from .targeting import NodeFacts, Requirement, TargetRule, parse_label_selector, rule_for_selector
from .workloads import WorkloadSummary

log = logging.getLogger(__name__)
T = TypeVar("T")

NODE_KIND = "Node"
NAMESPACE_KIND = "Namespace"
EXPLICIT_USER = "explicit (WARM_EXPLICIT_IMAGES)"


@dataclass
class Changes:
    added_images: set[str] = field(default_factory=set)  # entered the catalog
    removed_images: set[str] = field(default_factory=set)  # left it (grace period over)
    touched_images: set[str] = field(default_factory=set)  # users changed: rewrite the entry
    retargeted_images: set[str] = field(default_factory=set)  # placement or secrets changed
    moved_images: set[str] = field(default_factory=set)  # its tag points to a new digest
    joined_nodes: set[str] = field(default_factory=set)
    left_nodes: set[str] = field(default_factory=set)
    changed_nodes: set[str] = field(default_factory=set)  # labels or taints changed
    invalid: list[InvalidImage] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(vars(self).values())

    def merge(self, new: Changes) -> Changes:
        """``self`` followed by ``new``, as one batch (for changes not yet published)."""
        self.added_images = (self.added_images - new.removed_images) | new.added_images
        self.removed_images = (self.removed_images - new.added_images) | new.removed_images
        self.touched_images |= new.touched_images
        self.retargeted_images |= new.retargeted_images
        self.moved_images |= new.moved_images
        self.joined_nodes = (self.joined_nodes - new.left_nodes) | new.joined_nodes
        self.left_nodes = (self.left_nodes - new.joined_nodes) | new.left_nodes
        self.changed_nodes |= new.changed_nodes
        self.invalid += new.invalid
        return self


@dataclass
class ImageUse:
    """Who uses one image, and where they may run."""

    users: set[str] = field(default_factory=set)  # workload keys "namespace/Kind/name"
    rules: Counter[TargetRule] = field(default_factory=Counter)
    secrets: Counter[str] = field(default_factory=Counter)
    explicit_rule: TargetRule | None = None
    orphaned_at: float | None = None  # when the last user left; rules and secrets are kept

    def targets(self) -> list[TargetRule]:
        rules = list(self.rules)
        if self.explicit_rule is not None:
            rules.append(self.explicit_rule)
        return rules

    def pull_secrets(self) -> tuple[str, ...]:
        return tuple(sorted(self.secrets))


class CatalogState:
    def __init__(
        self,
        settings: WatchSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        mirror_namespace: str | None = None,
        has_copy: Callable[[str], bool] = lambda source: True,
    ) -> None:
        """``mirror_namespace``: where pull secrets are mirrored (None publishes none);
        ``has_copy`` tells whether a source has its copy there now."""
        self._grace = settings.catalog_grace_period
        self._mirror_namespace = mirror_namespace
        self._has_copy = has_copy
        self._clock = clock
        self._selector: tuple[Requirement, ...] | None = (
            parse_label_selector(settings.namespace_selector)
            if settings.namespace_selector.strip()
            else None
        )
        self.workloads: dict[str, WorkloadSummary] = {}  # every summary, selected or not
        self.by_kind: dict[str, set[str]] = {}  # kind -> workload keys, for re-lists
        self.by_namespace: dict[str, set[str]] = {}  # kept only with a namespace selector
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.images: dict[str, ImageUse] = {}
        self.orphans: dict[str, float] = {}  # image -> when its last user left
        self.nodes: dict[str, NodeFacts] = {}
        self._changes = Changes()
        self._add_explicit(settings)

    def apply(self, events: Iterable[Event]) -> Changes:
        """Apply a batch of events (and expire lingering images); return what changed."""
        for event in events:
            if isinstance(event, Listed):
                self._apply_listed(event)
            else:
                self._apply_changed(event)
        self._expire()
        changes, self._changes = self._changes, Changes()
        return changes

    def catalog_secrets(self, image: str) -> tuple[str, ...]:
        """The pull secrets a catalog entry or slice names for ``image``: the copies that exist."""
        namespace = self._mirror_namespace
        if namespace is None:
            return ()
        sources = self.images[image].pull_secrets()
        names = (mirrored_secret_name(source) for source in sources if self._has_copy(source))
        return tuple(sorted(f"{namespace}/{name}" for name in names))

    def images_using(self, sources: set[str]) -> set[str]:
        """Images some of whose pull secrets are among ``sources``."""
        if not sources:
            return set()
        return {image for image, use in self.images.items() if sources.intersection(use.secrets)}

    def gate_images(self) -> set[str]:
        """Images some workload annotated ``warm-images.io/gate: "true"`` uses."""
        gating = {key for key, summary in self.workloads.items() if summary.gate}
        return {image for image, use in self.images.items() if not gating.isdisjoint(use.users)}

    def referenced_secrets(self) -> set[str]:
        """Source pull secrets of the workloads in use now (lingering images keep none)."""
        if self._mirror_namespace is None:
            return set()
        return {
            source
            for use in self.images.values()
            if use.orphaned_at is None
            for source in use.secrets
        }

    # --- events -----------------------------------------------------------------------------

    def _apply_listed(self, event: Listed) -> None:
        if event.kind == NODE_KIND:
            for name in set(self.nodes) - set(event.items):
                self._set_node(name, None)
            for name, facts in event.items.items():
                self._set_node(name, facts)
        elif event.kind == NAMESPACE_KIND:
            for name in set(self.namespace_labels) - set(event.items):
                self._set_namespace(name, None)
            for name, labels in event.items.items():
                self._set_namespace(name, labels)
        else:
            listed = {_workload_key(event.kind, key) for key in event.items}
            for key in list(self.by_kind.get(event.kind, ())):
                in_scope = event.namespace is None or key.startswith(f"{event.namespace}/")
                if in_scope and key not in listed:
                    self._set_workload(key, None)
            for key, summary in event.items.items():
                self._set_workload(_workload_key(event.kind, key), summary)

    def _apply_changed(self, event: Changed) -> None:
        if event.kind == NODE_KIND:
            self._set_node(event.key, event.summary)
        elif event.kind == NAMESPACE_KIND:
            self._set_namespace(event.key, event.summary)
        else:
            self._set_workload(_workload_key(event.kind, event.key), event.summary)

    def _set_node(self, name: str, facts: NodeFacts | None) -> None:
        old = self.nodes.get(name)
        if facts is None:
            if self.nodes.pop(name, None) is not None:
                self._changes.left_nodes.add(name)
                self._changes.joined_nodes.discard(name)
            return
        self.nodes[name] = facts
        if old is None:
            self._changes.joined_nodes.add(name)
            self._changes.left_nodes.discard(name)
        elif old != facts:
            self._changes.changed_nodes.add(name)

    def _set_namespace(self, name: str, labels: tuple[tuple[str, str], ...] | None) -> None:
        if self._selector is None:
            return
        before = self._namespace_selected(name)
        if labels is None:
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = dict(labels)
        after = self._namespace_selected(name)
        if before == after:
            return
        for key in self.by_namespace.get(name, ()):
            summary = self.workloads[key]
            if after:
                self._contribute(key, summary)
            else:
                self._withdraw(key, summary)

    def _set_workload(self, key: str, summary: WorkloadSummary | None) -> None:
        old = self.workloads.get(key)
        if old == summary:
            return  # most MODIFIED events are status updates: nothing the catalog holds
        if old is not None and self._namespace_selected(old.namespace):
            self._withdraw(key, old)
        self._store(key, old, summary)
        if summary is None:
            return
        if self._namespace_selected(summary.namespace):
            self._contribute(key, summary)
        if summary.invalid and (old is None or old.invalid != summary.invalid):
            self._report_invalid(summary)

    def _store(self, key: str, old: WorkloadSummary | None, new: WorkloadSummary | None) -> None:
        summary = new or old
        assert summary is not None
        kind_keys = self.by_kind.setdefault(summary.kind, set())
        namespace_keys = (
            self.by_namespace.setdefault(summary.namespace, set())
            if self._selector is not None
            else set()
        )
        if new is None:
            del self.workloads[key]
            kind_keys.discard(key)
            namespace_keys.discard(key)
            return
        self.workloads[key] = new
        kind_keys.add(key)
        namespace_keys.add(key)

    # --- image use ----------------------------------------------------------------------------

    def _contribute(self, key: str, summary: WorkloadSummary) -> None:
        for image in summary.images:
            use = self.images.get(image)
            if use is None:
                use = self.images[image] = ImageUse()
                self._changes.added_images.add(image)
                self._changes.removed_images.discard(image)
            elif use.orphaned_at is not None:  # back in use: its old placement no longer holds
                use.orphaned_at = None
                del self.orphans[image]
                use.rules.clear()
                use.secrets.clear()
                self._changes.retargeted_images.add(image)
            use.users.add(key)
            if use.rules[summary.target] == 0:
                self._changes.retargeted_images.add(image)
            use.rules[summary.target] += 1
            for secret in summary.pull_secrets:
                if use.secrets[secret] == 0:
                    self._changes.retargeted_images.add(image)
                use.secrets[secret] += 1
            self._changes.touched_images.add(image)

    def _withdraw(self, key: str, summary: WorkloadSummary) -> None:
        for image in summary.images:
            use = self.images.get(image)
            if use is None or key not in use.users:
                continue
            use.users.discard(key)
            self._changes.touched_images.add(image)
            if not use.users and use.explicit_rule is None:
                self._orphan(image, use)  # keeps rules and secrets for the grace period
                continue
            _decrement(use.rules, summary.target, image, self._changes.retargeted_images)
            for secret in summary.pull_secrets:
                _decrement(use.secrets, secret, image, self._changes.retargeted_images)

    def _orphan(self, image: str, use: ImageUse) -> None:
        if self._grace <= 0:
            self._remove(image)
            return
        use.orphaned_at = self._clock()
        self.orphans[image] = use.orphaned_at

    def _expire(self) -> None:
        if not self.orphans:
            return
        deadline = self._clock() - self._grace
        for image in [image for image, since in self.orphans.items() if since <= deadline]:
            self._remove(image)

    def _remove(self, image: str) -> None:
        del self.images[image]
        self.orphans.pop(image, None)
        self._changes.removed_images.add(image)
        self._changes.added_images.discard(image)
        self._changes.touched_images.discard(image)
        self._changes.retargeted_images.add(image)

    # --- selection ----------------------------------------------------------------------------

    def _namespace_selected(self, namespace: str) -> bool:
        if self._selector is None:
            return True
        labels = self.namespace_labels.get(namespace)
        return labels is not None and all(r.matches(labels) for r in self._selector)

    @property
    def watches_namespaces(self) -> bool:
        """Whether the namespace label selector needs Namespace objects watched."""
        return self._selector is not None

    def _add_explicit(self, settings: WatchSettings) -> None:
        for item in settings.explicit:
            try:
                image = normalize_image(item.image)
            except InvalidImageReference as error:
                log.error("%s: skipping %r: %s", EXPLICIT_USER, item.image, error.rule)
                self._changes.invalid.append(InvalidImage(EXPLICIT_USER, item.image, error.rule))
                continue
            self.images[image] = ImageUse(explicit_rule=rule_for_selector(item.node_selector))
            self._changes.added_images.add(image)
            self._changes.touched_images.add(image)

    def _report_invalid(self, summary: WorkloadSummary) -> None:
        for reference, rule in summary.invalid:
            log.warning("%s: skipping image %r: %s", summary.key, reference, rule)
            self._changes.invalid.append(InvalidImage(summary.key, reference, rule))


def _workload_key(kind: str, object_key: str) -> str:
    namespace, _, name = object_key.partition("/")
    return f"{namespace}/{kind}/{name}"


def _decrement(counter: Counter[T], item: T, image: str, retargeted: set[str]) -> None:
    counter[item] -= 1
    if counter[item] <= 0:
        del counter[item]
        retargeted.add(image)
