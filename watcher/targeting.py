"""Where a workload's pods could run: node selectors, required node affinity, taints.

Sending every image to every node wastes disk and registry bandwidth, and an arm64 image pulled
on an amd64 node fails outright. So each workload's pod template is boiled down to a
:class:`TargetRule` with the scheduler's hard constraints (the soft ones, preferred affinity and
PreferNoSchedule taints, never stop a pod from landing on a node, so they never exclude one).

Rules and node facts are small frozen values, interned, so thousands of pods with the same
placement share one rule, and matching can be cached per (rule, node class).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OS_LABEL = "kubernetes.io/os"
# matchFields can only name metadata.name; it is matched as this pseudo label, which no real
# label can collide with ('@' is not allowed in label keys).
NAME_FIELD = "@metadata.name"
HARD_EFFECTS = ("NoSchedule", "NoExecute")
# Taints that Kubernetes itself puts on nodes for a while (not ready yet, under pressure,
# cordoned, cloud provider not initialized). Pods land there once they clear, so a joining
# node is warmed now instead of after it turns Ready.
# Startup taints (cluster-autoscaler ignores those with its prefix when it simulates; the gate's
# own, WARM_STARTUP_TAINT, is removed once the node is warm) are transient too: a node is
# warmed *because* it carries one.
TRANSIENT_TAINT_PREFIXES = (
    "node.kubernetes.io/",
    "node.cloudprovider.kubernetes.io/",
    "startup-taint.cluster-autoscaler.kubernetes.io/",
)

Labels = Mapping[str, str]
Taint = tuple[str, str, str]  # (key, value, effect)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement: In, NotIn, Exists, DoesNotExist, Gt, Lt."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        value = labels.get(self.key)
        if self.op == "In":
            return value is not None and value in self.values
        if self.op == "NotIn":
            return value is None or value not in self.values
        if self.op == "Exists":
            return value is not None
        if self.op == "DoesNotExist":
            return value is None
        if self.op in ("Gt", "Lt"):
            return _compare(self.op, value, self.values)
        return False  # an operator this version does not know: the scheduler would refuse too

    def describe(self) -> str:
        key = "metadata.name" if self.key == NAME_FIELD else self.key
        if self.op == "In" and len(self.values) == 1:
            return f"{key}={self.values[0]}"
        if self.op in ("Exists", "DoesNotExist"):
            return key if self.op == "Exists" else f"!{key}"
        symbol = {"Gt": ">", "Lt": "<"}.get(self.op)
        if symbol:
            return f"{key}{symbol}{self.values[0] if self.values else ''}"
        return f"{key} {self.op.lower()} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""  # "" tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        key, value, effect = taint
        if self.effect and self.effect != effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == key
        return self.key == key and self.value == value

    def describe(self) -> str:
        text = self.key or "*"
        if self.operator != "Exists":
            text += f"={self.value}"
        return f"{text}:{self.effect}" if self.effect else text


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What targeting needs to know of a node."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()  # sorted
    taints: tuple[Taint, ...] = ()  # hard, non-transient taints only, sorted
    startup_tainted: bool = False  # carries WARM_STARTUP_TAINT: the gate holds it
    created: float | None = None  # metadata.creationTimestamp, seconds since the epoch

    def label_map(self) -> dict[str, str]:
        return {**dict(self.labels), NAME_FIELD: self.name}


@dataclass(frozen=True, slots=True)
class TargetRule:
    """The nodes a pod could be scheduled on, as far as images are concerned.

    ``selector`` requirements are ANDed (nodeSelector, spec.os); ``terms`` are the required node
    affinity's terms, ORed, each an AND of requirements; ``()`` means no affinity at all.
    """

    selector: tuple[Requirement, ...] = ()
    terms: tuple[tuple[Requirement, ...], ...] = ()
    tolerations: tuple[Toleration, ...] = ()

    def matches(self, labels: Labels, taints: Iterable[Taint]) -> bool:
        if not all(requirement.matches(labels) for requirement in self.selector):
            return False
        if self.terms and not any(_all_match(term, labels) for term in self.terms):
            return False
        return all(any(t.tolerates(taint) for t in self.tolerations) for taint in taints)

    def label_keys(self) -> frozenset[str]:
        """The label keys this rule reads: nodes that differ only in others are equivalent."""
        found = {requirement.key for requirement in self.selector}
        found.update(requirement.key for term in self.terms for requirement in term)
        return frozenset(found)

    def describe(self) -> str:
        parts = [requirement.describe() for requirement in self.selector]
        if self.terms:
            alternatives = [
                " & ".join(r.describe() for r in term) or "nothing" for term in self.terms
            ]
            parts.append("affinity " + " | ".join(alternatives))
        if self.tolerations:
            parts.append("tolerates " + ", ".join(t.describe() for t in self.tolerations))
        return "; ".join(parts) or "any node"


ANY_NODE = TargetRule()
_interned: dict[TargetRule, TargetRule] = {ANY_NODE: ANY_NODE}


def intern_rule(rule: TargetRule) -> TargetRule:
    """One shared object per distinct rule: 100,000 pods of one placement hold one rule."""
    return _interned.setdefault(rule, rule)


def rule_for_pod_spec(spec: Mapping[str, Any]) -> TargetRule:
    """The rule for a pod spec (a Pod's spec or a workload's template spec)."""
    selector = [
        Requirement(str(key), "In", (str(value),))
        for key, value in sorted((spec.get("nodeSelector") or {}).items())
    ]
    pod_os = (spec.get("os") or {}).get("name")
    if pod_os:
        selector.append(Requirement(OS_LABEL, "In", (str(pod_os),)))
    tolerations = {_toleration(item) for item in spec.get("tolerations") or () if item}
    rule = TargetRule(
        tuple(dict.fromkeys(selector)),
        _required_terms(spec.get("affinity") or {}),
        tuple(sorted(tolerations, key=Toleration.describe)),
    )
    return intern_rule(rule)


def rule_for_selector(node_selector: Iterable[tuple[str, str]]) -> TargetRule:
    """The rule of an explicit image: its optional node selector, nothing else."""
    return intern_rule(TargetRule(tuple(Requirement(k, "In", (v,)) for k, v in node_selector)))


def node_facts(obj: Mapping[str, Any], startup_taint: str = "") -> NodeFacts:
    """What targeting and the startup gate need of a Node; ``startup_taint`` (a key) is
    noted, not kept among its taints: it says nothing of which pods may run there later."""
    meta = obj.get("metadata") or {}
    labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
    taints, gated = set(), False
    for taint in (obj.get("spec") or {}).get("taints") or ():
        if not isinstance(taint, dict) or taint.get("effect") not in HARD_EFFECTS:
            continue
        key = str(taint.get("key") or "")
        if startup_taint and key == startup_taint:
            gated = True
        elif not key.startswith(TRANSIENT_TAINT_PREFIXES):
            taints.add((key, str(taint.get("value") or ""), str(taint.get("effect"))))
    return NodeFacts(
        str(meta.get("name")),
        labels,
        tuple(sorted(taints)),
        gated,
        parse_timestamp(meta.get("creationTimestamp")),
    )


def parse_timestamp(value: object) -> float | None:
    """An RFC 3339 timestamp as the apiserver writes it, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _required_terms(affinity: Mapping[str, Any]) -> tuple[tuple[Requirement, ...], ...]:
    node_affinity = affinity.get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = []
    for term in required.get("nodeSelectorTerms") or ():
        requirements = [_requirement(e) for e in (term or {}).get("matchExpressions") or ()]
        requirements += [
            _requirement(e, NAME_FIELD)
            for e in (term or {}).get("matchFields") or ()
            if (e or {}).get("key") == "metadata.name"
        ]
        # A term without requirements matches no node (the scheduler's rule).
        terms.append(tuple(requirements) if requirements else (_NOTHING,))
    return tuple(terms)


_NOTHING = Requirement(NAME_FIELD, "In", ())  # no node name is in ()


def _requirement(expression: Mapping[str, Any], key: str | None = None) -> Requirement:
    values = tuple(sorted(str(v) for v in expression.get("values") or ()))
    return Requirement(key or str(expression.get("key")), str(expression.get("operator")), values)


def _toleration(item: Mapping[str, Any]) -> Toleration:
    return Toleration(
        key=str(item.get("key") or ""),
        operator=str(item.get("operator") or "Equal"),
        value=str(item.get("value") or ""),
        effect=str(item.get("effect") or ""),
    )


def _all_match(requirements: tuple[Requirement, ...], labels: Labels) -> bool:
    return all(requirement.matches(labels) for requirement in requirements)


def _compare(op: str, value: str | None, values: tuple[str, ...]) -> bool:
    if value is None or len(values) != 1:
        return False
    try:
        have, bound = int(value), int(values[0])
    except ValueError:
        return False
    return have > bound if op == "Gt" else have < bound


_SELECTOR_TERM = re.compile(
    r"\s*(?:(?P<set_key>[^\s,!=()]+)\s+(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\)"
    r"|!(?P<absent>[^\s,!=()]+)"
    r"|(?P<key>[^\s,!=()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,!=()]*))?)\s*(?:,|$)"
)


class InvalidSelector(ValueError):
    """A label selector this watcher cannot parse."""


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """A Kubernetes label selector string ("a=b,c!=d,e,!f,g in (x,y),h notin (z)")."""
    requirements: list[Requirement] = []
    position, text = 0, text.strip()
    while position < len(text):
        match = _SELECTOR_TERM.match(text, position)
        if match is None or match.end() == position:
            raise InvalidSelector(f"cannot parse label selector {text!r} at {text[position:]!r}")
        requirements.append(_selector_requirement(match))
        position = match.end()
    return tuple(requirements)


def _selector_requirement(match: re.Match[str]) -> Requirement:
    if match["set_key"]:
        values = tuple(sorted(v.strip() for v in match["values"].split(",") if v.strip()))
        return Requirement(match["set_key"], "In" if match["set_op"] == "in" else "NotIn", values)
    if match["absent"]:
        return Requirement(match["absent"], "DoesNotExist")
    if match["op"] is None:
        return Requirement(match["key"], "Exists")
    return Requirement(match["key"], "NotIn" if match["op"] == "!=" else "In", (match["value"],))
