"""Strategic merge patch, the part of it kubectl apply and kubectl patch use on workloads.

``kubectl apply`` (client-side) sends ``application/strategic-merge-patch+json``: lists such as
``containers`` are merged by a key (``name``) rather than replaced, and ``$``-directives
(``$patch``, ``$setElementOrder/…``, ``$retainKeys``, ``$deleteFromPrimitiveList/…``) say what
to delete or how to order. A plain dict merge (kmock's PATCH) would store the directives as
fields and drop sibling containers.

The merge keys come from Kubernetes' API types (``patchMergeKey`` tags); this double keys them
by field name alone, which is unambiguous for the core, apps and batch kinds the product
watches. Lists without a merge key are replaced, as the apiserver does.
"""

from __future__ import annotations

import copy
from typing import Any

# Field name -> patchMergeKey, from k8s.io/api core/v1, apps/v1 and batch/v1.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
    "conditions": "type",
    "ownerReferences": "uid",
}
_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def apply(original: Any, patch: Any) -> Any:
    """``original`` with the strategic merge ``patch`` applied; neither argument is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS:
            result[key] = _merge_list(result.get(key) or [], value, MERGE_KEYS[key])
        elif isinstance(value, dict):
            merged = apply(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    for key, value in patch.items():
        if key.startswith(_DELETE_PRIMITIVES):
            field = key[len(_DELETE_PRIMITIVES) :]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith(_ORDER) and key[len(_ORDER) :] in MERGE_KEYS:
            field = key[len(_ORDER) :]
            result[field] = _ordered(result.get(field) or [], value, MERGE_KEYS[field])
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            return copy.deepcopy(patch)  # not a keyed list after all: replace, as JSON would
        index = next(
            (i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(apply({}, item))
        else:
            merged[index] = apply(merged[index], item)
    return merged


def _ordered(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    """Items in the order the patch lists their keys; items it does not list keep their place
    after those."""
    rank = {entry.get(merge_key): i for i, entry in enumerate(order) if isinstance(entry, dict)}
    return sorted(items, key=lambda item: rank.get(item.get(merge_key), len(rank)))
