"""Which images belong on which node, computed per class of equivalent nodes.

5,000 nodes times 2,000 images cannot be kept as 5,000 sets of strings, nor recomputed per
node on every change. Nodes that agree on every label some placement rule reads, and on their
taints, are equivalent: whatever may run on one may run on the others. So nodes are grouped
into classes, image membership is computed per class (with each (rule, class) match cached),
and all nodes of a class share one slice object. Labels no rule reads (the hostname, zone,
instance id) do not split classes, until a rule starts reading them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.models import SliceImage

from .catalog import CatalogState, Changes, ImageUse
from .targeting import NodeFacts, TargetRule

ClassKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str, str], ...]]


@dataclass
class NodeClass:
    labels: dict[str, str]
    taints: tuple[tuple[str, str, str], ...]
    nodes: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    _content: tuple[SliceImage, ...] | None = None  # cached slice, None when stale

    def stale(self) -> None:
        self._content = None

    def content(self, state: CatalogState) -> tuple[SliceImage, ...]:
        if self._content is None:
            self._content = tuple(
                SliceImage(image, state.images[image].pull_secrets())
                for image in sorted(self.images)
            )
        return self._content


class SliceIndex:
    def __init__(self, state: CatalogState) -> None:
        self._state = state
        self._keys: frozenset[str] = frozenset()  # label keys some rule reads
        self._classes: dict[ClassKey, NodeClass] = {}
        self._node_class: dict[str, ClassKey] = {}
        self._matches: dict[tuple[TargetRule, ClassKey], bool] = {}

    @property
    def class_count(self) -> int:
        return len(self._classes)

    def update(self, changes: Changes, *, rebuild: bool = False) -> set[str]:
        """Apply ``changes``; return the nodes whose slice may have changed."""
        if rebuild:  # every image's rules, not only the changed ones': nothing may be missed
            self._keys = _rule_keys(self._state.images.values())
            return self._rebuild()
        keys = self._keys | _rule_keys(
            self._state.images[image]
            for image in changes.retargeted_images | changes.added_images
            if image in self._state.images
        )
        if keys != self._keys:
            self._keys = keys
            return self._rebuild()
        affected: set[str] = set()
        for node in changes.left_nodes:
            self._leave(node)
        fresh: set[ClassKey] = set()
        for node in changes.joined_nodes | changes.changed_nodes:
            if node in self._state.nodes:
                fresh |= self._place(node)
                affected.add(node)
        images = changes.retargeted_images | changes.added_images | changes.removed_images
        for key, node_class in self._classes.items():
            if key not in fresh and self._refresh(key, node_class, images):
                affected |= node_class.nodes
        return affected

    def slice_of(self, node: str) -> tuple[SliceImage, ...]:
        return self._classes[self._node_class[node]].content(self._state)

    def target_nodes(self, image: str) -> int:
        return sum(len(c.nodes) for c in self._classes.values() if image in c.images)

    def _rebuild(self) -> set[str]:
        self._classes.clear()
        self._node_class.clear()
        self._matches.clear()
        for node in self._state.nodes:
            self._place(node)
        return set(self._state.nodes)

    def _leave(self, node: str) -> None:
        key = self._node_class.pop(node, None)
        if key is None:
            return
        node_class = self._classes[key]
        node_class.nodes.discard(node)
        if not node_class.nodes:
            del self._classes[key]
            self._matches = {k: v for k, v in self._matches.items() if k[1] != key}

    def _place(self, node: str) -> set[ClassKey]:
        """Put ``node`` in its class; returns the class's key if the class is new."""
        self._leave(node)
        facts = self._state.nodes[node]
        key = self._class_key(facts)
        self._node_class[node] = key
        node_class = self._classes.get(key)
        if node_class is not None:
            node_class.nodes.add(node)
            return set()
        node_class = self._classes[key] = NodeClass(dict(key[0]), key[1], {node})
        node_class.images = {
            image for image, use in self._state.images.items() if self._member(key, use)
        }
        return {key}

    def _refresh(self, key: ClassKey, node_class: NodeClass, images: Iterable[str]) -> bool:
        changed = False
        for image in images:
            use = self._state.images.get(image)
            if use is not None and self._member(key, use):
                changed = True  # new, or its secrets may have changed
                node_class.images.add(image)
            elif image in node_class.images:
                changed = True
                node_class.images.discard(image)
        if changed:
            node_class.stale()
        return changed

    def _member(self, key: ClassKey, use: ImageUse) -> bool:
        return any(self._match(rule, key) for rule in use.targets())

    def _match(self, rule: TargetRule, key: ClassKey) -> bool:
        found = self._matches.get((rule, key))
        if found is None:
            node_class = self._classes[key]
            found = self._matches[(rule, key)] = rule.matches(node_class.labels, node_class.taints)
        return found

    def _class_key(self, facts: NodeFacts) -> ClassKey:
        labels = facts.label_map()
        kept = tuple(sorted((k, labels[k]) for k in self._keys if k in labels))
        return kept, facts.taints


def _rule_keys(uses: Iterable[ImageUse]) -> frozenset[str]:
    keys: set[str] = set()
    for use in uses:
        for rule in use.targets():
            keys |= rule.keys()
    return frozenset(keys)
