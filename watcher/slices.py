"""Which images belong on which node, computed per class of equivalent nodes, as bitmasks.

5,000 nodes times 2,000 images cannot be kept as 5,000 sets of strings, nor recomputed per
node on every change. Two ideas keep it small and fast:

* Nodes that agree on every label some placement rule reads, and on their taints, are
  equivalent: whatever may run on one may run on the others. Nodes are grouped into such
  classes; labels no rule reads (hostname, zone, instance id) do not split them, until a rule
  starts reading them.
* Every image has a bit; every distinct placement rule has the mask of the images that use it.
  A class's slice is the OR of the masks of the rules that match it: an integer of a few
  hundred bytes, computed in (matching rules) big-integer ORs, however many images there are.
  Even when every node is its own class (a workload pinned by hostname), 5,000 slices are
  5,000 small integers.

A bit stays with its image for as long as the image is in the catalog; a freed bit is reused
only from the next update on, once the dispatcher has rewritten every slice that held it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tasks.models import ClassSlice, SliceImage

from .catalog import CatalogState, Changes
from .targeting import NodeFacts, TargetRule

ClassKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str, str], ...]]


@dataclass
class NodeClass:
    labels: dict[str, str]
    taints: tuple[tuple[str, str, str], ...]
    nodes: set[str] = field(default_factory=set)
    rules: list[TargetRule] | None = None  # the rules that match it; None: to compute
    members: int = 0  # bitmask of its images


class SliceIndex:
    def __init__(
        self, state: CatalogState, digest_of: Callable[[str], str | None] = lambda image: None
    ) -> None:
        self._state = state
        self._digest_of = digest_of  # the leader's resolved digests (watcher/digests.py)
        self._keys: frozenset[str] = frozenset()  # label keys some rule reads
        self._classes: dict[ClassKey, NodeClass] = {}
        self._node_class: dict[str, ClassKey] = {}
        self._bits: dict[str, int] = {}  # image -> bit
        self._names: dict[int, str] = {}  # bit -> image
        self._free: list[int] = []
        self._freed: list[int] = []  # reusable from the next update on
        self._next_bit = 0
        self._image_rules: dict[str, frozenset[TargetRule]] = {}
        self._rule_masks: dict[TargetRule, int] = {}
        self._slice_images: dict[str, SliceImage] = {}  # shared by every slice that holds it
        self._fragments: dict[str, bytes] = {}  # image -> its SliceImage as JSON

    @property
    def class_count(self) -> int:
        return len(self._classes)

    def update(self, changes: Changes, *, rebuild: bool = False) -> set[str]:
        """Apply ``changes``; return the nodes whose slice may have changed."""
        self._free += self._freed
        self._freed = []
        images = changes.retargeted_images | changes.added_images | changes.removed_images
        images |= changes.moved_images  # their slice entries carry the new digest
        if rebuild:
            images = set(self._bits) | set(self._state.images)
        rules_before = set(self._rule_masks)
        for image in images:
            self._retarget(image)
        keys = self._keys | {key for rule in self._rule_masks for key in rule.label_keys()}
        if rebuild or keys != self._keys:
            self._keys = keys
            return self._regroup()
        placed = self._move_nodes(changes)
        if set(self._rule_masks) != rules_before:
            for node_class in self._classes.values():
                node_class.rules = None
        return placed | self._recompute(self.mask_of(images))

    def members(self, node: str) -> int:
        """The bitmask of the images that belong on ``node``."""
        return self._classes[self._node_class[node]].members

    def mask_of(self, images: Iterable[str]) -> int:
        mask = 0
        for image in images:
            bit = self._bits.get(image)
            if bit is not None:
                mask |= 1 << bit
        return mask

    def images(self, mask: int) -> list[str]:
        """The images of ``mask``, sorted."""
        names, found, bit = self._names, [], 0
        while mask:
            if mask & 1:
                found.append(names[bit])
            mask >>= 1
            bit += 1
        return sorted(found)

    def slice_images(self, mask: int) -> tuple[SliceImage, ...]:
        return tuple(self._slice_image(image) for image in self.images(mask))

    def slice_json(self, mask: int, held: int = 0) -> bytes:
        """The :class:`ClassSlice` JSON of ``mask`` (and the names of the ``held`` images),
        from per-image cached fragments, so that 5,000 distinct slices of 2,000 images
        serialize in well under a second."""
        fragments, images = self._fragments, self.images(mask)
        for image in images:
            if image not in fragments:
                fragments[image] = self._slice_image(image).to_json()
        return ClassSlice.join((fragments[image] for image in images), self.images(held))

    def target_nodes(self, image: str) -> int:
        mask = self.mask_of([image])
        return sum(len(c.nodes) for c in self._classes.values() if c.members & mask)

    def target_classes(self, image: str) -> list[set[str]]:
        """The nodes ``image`` belongs on, class by class."""
        mask = self.mask_of([image])
        return [set(c.nodes) for c in self._classes.values() if mask and c.members & mask]

    def nodes_with(self, mask: int) -> set[str]:
        """The nodes some image of ``mask`` belongs on."""
        if not mask:
            return set()
        return {node for c in self._classes.values() if c.members & mask for node in c.nodes}

    def _slice_image(self, image: str) -> SliceImage:
        found = self._slice_images.get(image)
        if found is None:
            secrets = self._state.catalog_secrets(image)
            digest = self._digest_of(image)
            found = self._slice_images[image] = SliceImage(image, secrets, digest)
        return found

    def _retarget(self, image: str) -> None:
        """Bring ``image``'s bit and its rules' masks up to date with the state."""
        self._slice_images.pop(image, None)  # its pull secrets may have changed
        self._fragments.pop(image, None)
        bit = self._bits.get(image)
        if bit is not None:
            for rule in self._image_rules.pop(image, ()):
                self._rule_masks[rule] &= ~(1 << bit)
                if not self._rule_masks[rule]:
                    del self._rule_masks[rule]
        use = self._state.images.get(image)
        if use is None:
            if bit is not None:
                del self._bits[image], self._names[bit]
                self._freed.append(bit)
            return
        if bit is None:
            bit = self._free.pop() if self._free else self._next_bit
            self._next_bit = max(self._next_bit, bit + 1)
            self._bits[image], self._names[bit] = bit, image
        rules = frozenset(use.targets())
        self._image_rules[image] = rules
        for rule in rules:
            self._rule_masks[rule] = self._rule_masks.get(rule, 0) | (1 << bit)

    def _regroup(self) -> set[str]:
        self._classes.clear()
        self._node_class.clear()
        for node in self._state.nodes:
            self._place(node)
        self._recompute(0)
        return set(self._state.nodes)

    def _move_nodes(self, changes: Changes) -> set[str]:
        for node in changes.left_nodes:
            self._leave(node)
        placed = set()
        for node in changes.joined_nodes | changes.changed_nodes:
            if node in self._state.nodes:
                self._place(node)
                placed.add(node)
        return placed

    def _recompute(self, changed: int) -> set[str]:
        """Recompute every class's members; the nodes of classes that changed or that hold a
        changed image (its pull secrets may differ) are affected."""
        affected: set[str] = set()
        for node_class in self._classes.values():
            if node_class.rules is None:
                node_class.rules = [
                    rule
                    for rule in self._rule_masks
                    if rule.matches(node_class.labels, node_class.taints)
                ]
            members = 0
            for rule in node_class.rules:
                members |= self._rule_masks.get(rule, 0)
            if members != node_class.members or members & changed:
                affected |= node_class.nodes
            node_class.members = members
        return affected

    def _leave(self, node: str) -> None:
        key = self._node_class.pop(node, None)
        if key is None:
            return
        node_class = self._classes[key]
        node_class.nodes.discard(node)
        if not node_class.nodes:
            del self._classes[key]

    def _place(self, node: str) -> None:
        self._leave(node)
        key = self._class_key(self._state.nodes[node])
        self._node_class[node] = key
        node_class = self._classes.get(key)
        if node_class is None:
            node_class = self._classes[key] = NodeClass(dict(key[0]), key[1])
        node_class.nodes.add(node)

    def _class_key(self, facts: NodeFacts) -> ClassKey:
        labels = facts.label_map()
        kept = tuple(sorted((k, labels[k]) for k in self._keys if k in labels))
        return kept, facts.taints
