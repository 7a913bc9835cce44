"""Placement rules: the scheduler's hard constraints, boiled down from pod specs."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.targeting import (
    ANY_NODE,
    InvalidSelector,
    Requirement,
    node_facts,
    parse_label_selector,
    rule_for_pod_spec,
    rule_for_selector,
)


def node(
    name: str = "n1", labels: dict[str, str] | None = None, taints: list[Any] | None = None
) -> Any:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or []},
    }


def runs_on(spec: dict[str, Any], obj: Any) -> bool:
    facts = node_facts(obj)
    return rule_for_pod_spec(spec).matches(facts.label_map(), facts.taints)


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": list(t)} for t in terms]
                }
            }
        }
    }


def test_a_pod_without_constraints_runs_anywhere() -> None:
    assert rule_for_pod_spec({}) is ANY_NODE
    assert runs_on({}, node(labels={"a": "b"}))


def test_node_selector_must_match_every_label() -> None:
    spec = {"nodeSelector": {"kubernetes.io/arch": "arm64", "pool": "gpu"}}
    assert runs_on(spec, node(labels={"kubernetes.io/arch": "arm64", "pool": "gpu", "x": "y"}))
    assert not runs_on(spec, node(labels={"kubernetes.io/arch": "amd64", "pool": "gpu"}))
    assert not runs_on(spec, node(labels={"kubernetes.io/arch": "arm64"}))


def test_pod_os_requires_the_os_label() -> None:
    spec = {"os": {"name": "windows"}}
    assert runs_on(spec, node(labels={"kubernetes.io/os": "windows"}))
    assert not runs_on(spec, node(labels={"kubernetes.io/os": "linux"}))


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "c"}, False),
        ({"key": "zone", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "a"}, False),
        ({"key": "gpu", "operator": "Exists"}, {"gpu": ""}, True),
        ({"key": "gpu", "operator": "Exists"}, {}, False),
        ({"key": "gpu", "operator": "DoesNotExist"}, {}, True),
        ({"key": "gpu", "operator": "DoesNotExist"}, {"gpu": "1"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "16"}, True),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "8"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "many"}, False),
        ({"key": "cores", "operator": "Lt", "values": ["8"]}, {"cores": "4"}, True),
        ({"key": "cores", "operator": "Lt", "values": ["8"]}, {}, False),
        ({"key": "cores", "operator": "Fancy", "values": ["8"]}, {"cores": "4"}, False),
    ],
)
def test_required_affinity_operators(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert runs_on(affinity([expression]), node(labels=labels)) is expected


def test_affinity_terms_are_ored_and_expressions_anded() -> None:
    spec = affinity(
        [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
            {"key": "pool", "operator": "In", "values": ["edge"]},
        ],
        [{"key": "gpu", "operator": "Exists"}],
    )
    assert runs_on(spec, node(labels={"kubernetes.io/arch": "arm64", "pool": "edge"}))
    assert not runs_on(spec, node(labels={"kubernetes.io/arch": "arm64"}))
    assert runs_on(spec, node(labels={"gpu": "a100"}))


def test_match_fields_on_the_node_name_and_empty_terms() -> None:
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["n2"]}
                            ]
                        },
                        {},  # an empty term matches nothing
                    ]
                }
            }
        }
    }
    assert runs_on(spec, node("n2"))
    assert not runs_on(spec, node("n1"))


def test_preferred_affinity_never_excludes_a_node() -> None:
    spec = {
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
                    }
                ]
            }
        }
    }
    assert runs_on(spec, node())


def test_taints_need_tolerations() -> None:
    gpu = node(taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    evicting = node(taints=[{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}])
    soft = node(taints=[{"key": "dedicated", "value": "gpu", "effect": "PreferNoSchedule"}])
    assert not runs_on({}, gpu)
    assert not runs_on({}, evicting)
    assert runs_on({}, soft)
    equal = {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}
    assert runs_on(equal, gpu) and runs_on(equal, evicting)
    wrong_value = {"tolerations": [{"key": "dedicated", "value": "cpu"}]}
    assert not runs_on(wrong_value, gpu)
    exists = {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}
    assert runs_on(exists, gpu) and not runs_on(exists, evicting)
    everything = {"tolerations": [{"operator": "Exists"}]}
    assert runs_on(everything, gpu) and runs_on(everything, evicting)


def test_kubernetes_condition_taints_do_not_hold_back_warming() -> None:
    joining = node(
        taints=[
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
            {"key": "node.cloudprovider.kubernetes.io/uninitialized", "effect": "NoSchedule"},
        ]
    )
    assert runs_on({}, joining)


def test_equal_rules_are_one_object_and_describe_themselves() -> None:
    spec = {
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
    }
    assert rule_for_pod_spec(spec) is rule_for_pod_spec(dict(spec))
    assert rule_for_pod_spec(spec).describe() == (
        "kubernetes.io/arch=arm64; tolerates dedicated=gpu:NoSchedule"
    )
    assert rule_for_pod_spec(spec).label_keys() == {"kubernetes.io/arch"}
    assert ANY_NODE.describe() == "any node"
    assert rule_for_selector([("pool", "edge")]).describe() == "pool=edge"


def test_label_selectors_parse_like_kubectl() -> None:
    parsed = parse_label_selector("team=web, env!=dev,tier in (a, b),x notin (y),gpu,!legacy")
    assert parsed == (
        Requirement("team", "In", ("web",)),
        Requirement("env", "NotIn", ("dev",)),
        Requirement("tier", "In", ("a", "b")),
        Requirement("x", "NotIn", ("y",)),
        Requirement("gpu", "Exists"),
        Requirement("legacy", "DoesNotExist"),
    )
    with pytest.raises(InvalidSelector):
        parse_label_selector("team=web,,(")


def test_startup_taints_do_not_keep_images_off_a_new_node() -> None:
    """The gate's own taint and cluster-autoscaler's startup taints come off before workloads
    run: the node is noted as gated, and warmed for what will run there."""
    gate = {"key": "warm-images.io/warming", "effect": "NoSchedule"}
    autoscaler = {"key": "startup-taint.cluster-autoscaler.kubernetes.io/x", "effect": "NoSchedule"}
    obj = node(taints=[gate, autoscaler])
    obj["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z"
    facts = node_facts(obj, startup_taint="warm-images.io/warming")
    assert (facts.taints, facts.startup_tainted, facts.created) == ((), True, 1767323045.0)
    assert rule_for_pod_spec({}).matches(facts.label_map(), facts.taints)
    # With the gate off, its key is a taint like any other, and no node is held.
    off = node_facts(obj)
    assert (off.startup_tainted, off.taints) == (
        False,
        (("warm-images.io/warming", "", "NoSchedule"),),
    )
    assert node_facts(node()).created is None
