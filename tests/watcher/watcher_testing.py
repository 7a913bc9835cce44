"""Helpers for the watcher tests: a watched cluster, objects as the API takes them, waiting."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from kubernetes import client

from localcluster import FakeKubeAPI
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore, UnknownNode
from tasks.models import Outcome, PullResult
from tasks.names import pull_events_subject
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, Settings, load_settings
from watcher.service import Watcher

BROKER_DB = 5


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def uid() -> str:
    return uuid.uuid4().hex[:6]


@dataclass
class WatchedCluster:
    """One API double, one running watcher, and ways to read what it published."""

    kube: FakeKubeAPI
    api: client.ApiClient
    catalog: CatalogStore
    broker: redis.Redis
    watcher: Watcher
    stop: threading.Event
    thread: threading.Thread
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def entries(self) -> dict[str, Any]:
        return {entry.image: entry for entry in self.catalog.entries()}

    def slice_images(self, node: str) -> set[str] | None:
        try:
            node_slice, _ = self.catalog.get_slice(node)
        except UnknownNode:
            return None
        return {item.image for item in node_slice.images}

    def pass_canaries(self, bus: NatsBus, image: str) -> None:
        """Play the canaries of ``image``'s wave, if it has one: each reports it pulled, as
        its worker would, so the wave sends it to every node (tests/watcher/test_waves.py)."""
        wave = self.catalog.waves().get(image)
        for canary in wave.canaries if wave is not None else ():
            result = PullResult(canary, image, Outcome.PULLED, digest=wave.digest)
            bus.publish(pull_events_subject(canary), result.to_json())

    def tasks(self, node: str) -> list[tuple[str, dict[str, Any]]]:
        """(task name, kwargs) of every message waiting in the node's queue, oldest first."""
        found = []
        for raw in reversed(self.broker.lrange(queue_for_node(node), 0, -1)):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["task"], body[1]))
        return found


def watcher_settings(
    nats: NatsServer,
    broker: RedisServer,
    health_port: int = 0,
    release_namespace: str = "default",
    pull_secret_namespace: str | None = None,
    **watch: Any,
) -> Settings:
    """The product's settings for a watcher of these servers; the copies of pull secrets go to
    ``pull_secret_namespace``, by default the release namespace (as the product's default)."""
    base = load_settings(
        {
            "WARM_NATS_URL": nats.url,
            "WARM_BROKER_URL": f"{broker.url}/{BROKER_DB}",
            "WARM_HEALTH_PORT": str(health_port),
            "WARM_METRICS_PORT": "0",
        }
    )
    watch.setdefault("catalog_grace_period", 0.0)
    return replace(
        base,
        nats=NatsSettings(url=nats.url),
        watch=replace(base.watch, **watch),
        release_namespace=release_namespace,
        pull_secret_namespace=pull_secret_namespace or release_namespace,
    )


def node(name: str, labels: dict[str, str] | None = None, taints: list[Any] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []},
    }


def pod_template(image: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "main", "image": image}], **spec},
    }


def workload(
    kind: str,
    name: str,
    image: str,
    *,
    namespace: str = "default",
    replicas: int = 0,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Any:
    """A workload object of ``kind`` as the API takes it, with one container ``image``."""
    api_version = {"Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    meta = {"name": name, "namespace": namespace, "annotations": annotations or {}}
    template = pod_template(image, **spec)
    body: dict[str, Any]
    if kind == "CronJob":
        body = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "Job":
        body = {"template": template}
    else:
        body = {"selector": {"matchLabels": {"app": "x"}}, "template": template}
        if kind != "DaemonSet":
            body["replicas"] = replicas
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": body}


def create(cluster_api: client.ApiClient, obj: Any) -> None:
    """Create any object this module builds, through the official client's typed call."""
    kind, namespace = obj["kind"], obj["metadata"].get("namespace", "default")
    core, apps, batch = (
        client.CoreV1Api(cluster_api),
        client.AppsV1Api(cluster_api),
        client.BatchV1Api(cluster_api),
    )
    calls: dict[str, Callable[..., Any]] = {
        "Pod": core.create_namespaced_pod,
        "Deployment": apps.create_namespaced_deployment,
        "ReplicaSet": apps.create_namespaced_replica_set,
        "StatefulSet": apps.create_namespaced_stateful_set,
        "DaemonSet": apps.create_namespaced_daemon_set,
        "Job": batch.create_namespaced_job,
        "CronJob": batch.create_namespaced_cron_job,
    }
    calls[kind](namespace, obj)
