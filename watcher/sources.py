"""Which Kubernetes resources the watcher lists and watches, and through which API calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client

from .catalog import NODE_KIND
from .reflector import Event, Reflector
from .workloads import summarize_node, summarize_workload


@dataclass(frozen=True)
class Source:
    kind: str
    all_namespaces: Callable[..., Any]
    namespaced: Callable[..., Any] | None  # None for cluster-scoped kinds


def sources(api: client.ApiClient) -> list[Source]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    return [
        Source(NODE_KIND, core.list_node, None),
        Source("Pod", core.list_pod_for_all_namespaces, core.list_namespaced_pod),
        Source(
            "Deployment", apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment
        ),
    ]


def reflectors(
    api: client.ApiClient, namespaces: tuple[str, ...], sink: Callable[[Event], None]
) -> list[Reflector]:
    """One reflector per kind, or per kind and namespace when namespaces are listed."""
    result = []
    for source in sources(api):
        summarize: Callable[[dict[str, Any]], Any] = (
            summarize_node if source.kind == NODE_KIND else partial(summarize_workload, source.kind)
        )
        if source.namespaced is None or "*" in namespaces:
            result.append(Reflector(source.kind, source.all_namespaces, summarize, sink))
            continue
        for namespace in namespaces:
            result.append(
                Reflector(source.kind, source.namespaced, summarize, sink, namespace=namespace)
            )
    return result
