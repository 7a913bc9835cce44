"""Which Kubernetes resources the watcher lists and watches, and through which API calls.

Every kind that carries a pod template is watched, because a workload scaled to zero (the
scale-from-zero case) and a CronJob between runs have no Pods, yet their images must be warm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client

from tasks.settings import WatchSettings

from .catalog import NAMESPACE_KIND, NODE_KIND
from .reflector import Event, Reflector
from .targeting import node_facts
from .workloads import Summarizer, summarize_namespace


@dataclass(frozen=True)
class Source:
    kind: str
    all_namespaces: Callable[..., Any]
    namespaced: Callable[..., Any] | None  # None for cluster-scoped kinds


def workload_sources(api: client.ApiClient) -> list[Source]:
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    return [
        Source("Pod", core.list_pod_for_all_namespaces, core.list_namespaced_pod),
        Source(
            "Deployment", apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment
        ),
        Source(
            "ReplicaSet", apps.list_replica_set_for_all_namespaces, apps.list_namespaced_replica_set
        ),
        Source(
            "StatefulSet",
            apps.list_stateful_set_for_all_namespaces,
            apps.list_namespaced_stateful_set,
        ),
        Source(
            "DaemonSet", apps.list_daemon_set_for_all_namespaces, apps.list_namespaced_daemon_set
        ),
        Source("Job", batch.list_job_for_all_namespaces, batch.list_namespaced_job),
        Source("CronJob", batch.list_cron_job_for_all_namespaces, batch.list_namespaced_cron_job),
    ]


def reflectors(
    api: client.ApiClient,
    settings: WatchSettings,
    sink: Callable[[Event], None],
    *,
    watch_namespaces: bool,
) -> list[Reflector]:
    """Nodes (and Namespaces when selected by label), and one reflector per workload kind, or
    per kind and namespace when namespaces are listed."""
    core = client.CoreV1Api(api)
    facts = partial(node_facts, startup_taint=settings.startup_taint)
    result = [Reflector(NODE_KIND, core.list_node, facts, sink)]
    if watch_namespaces:
        result.append(Reflector(NAMESPACE_KIND, core.list_namespace, summarize_namespace, sink))
    summarizer = Summarizer(settings)
    namespaces = [n for n in settings.namespaces if n not in settings.ignore_namespaces]
    for source in workload_sources(api):
        summarize = partial(summarizer.workload, source.kind)
        if source.namespaced is None or "*" in settings.namespaces:
            result.append(Reflector(source.kind, source.all_namespaces, summarize, sink))
            continue
        for namespace in namespaces:
            result.append(
                Reflector(source.kind, source.namespaced, summarize, sink, namespace=namespace)
            )
    return result
