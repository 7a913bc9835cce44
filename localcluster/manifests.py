"""Kubernetes objects for the simulated cluster, as plain dicts the official client accepts.

Shared by the demo, the tests and the benchmarks, so they all seed the API double the same way.
They are typed ``Any`` because the client's signatures name its model classes, while the API
(and the double) take the same JSON either way.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client


def node(name: str, labels: dict[str, str] | None = None) -> Any:
    # Ready, as the kubelet would report: each simulated node has its own running containerd
    # (and `kubectl get nodes` shows STATUS Ready rather than Unknown).
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"conditions": [ready]},
    }


def deployment(name: str, image: str, *, replicas: int = 1, namespace: str = "default") -> Any:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }


def pod(name: str, image: str, *, init_image: str | None = None, namespace: str = "default") -> Any:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": image}]}
    if init_image:
        spec["initContainers"] = [{"name": "init", "image": init_image}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def create_nodes(api: client.ApiClient, names: list[str] | tuple[str, ...]) -> None:
    core = client.CoreV1Api(api)
    for name in names:
        core.create_node(node(name))


def kubelet_event(
    name: str,
    node_name: str,
    message: str,
    *,
    pod_name: str,
    at: str,
    count: int = 1,
    api: str = "core/v1",
    reason: str = "Pulled",
    namespace: str = "default",
) -> Any:
    """An Event as the kubelet records it on a pod (``Pulled`` by default), for the Events API:
    ``core/v1`` (what the kubelet's recorder writes) or ``events.k8s.io/v1`` (what newer
    recorders write, with a series for repeats). ``at`` is an RFC 3339 time."""
    regarding = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod_name,
        "namespace": namespace,
        "fieldPath": "spec.containers{main}",
    }
    meta = {"name": name, "namespace": namespace}
    if api == "core/v1":
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": meta,
            "involvedObject": regarding,
            "reason": reason,
            "message": message,
            "type": "Normal",
            "source": {"component": "kubelet", "host": node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": node_name,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": count,
        }
    series = {"series": {"count": count, "lastObservedTime": at}} if count > 1 else {}
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": meta,
        "regarding": regarding,
        "reason": reason,
        "note": message,
        "type": "Normal",
        "action": "Pulled",
        "eventTime": at,
        "reportingController": "kubelet",
        "reportingInstance": node_name,
        **series,
    }
