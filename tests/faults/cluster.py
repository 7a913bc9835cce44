"""A one-node simulated cluster with its own NATS and Redis, so a drill may break them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from localcluster import Containerd, FakeKubeAPI, product
from localcluster.harness import Events, wait_for
from localcluster.manifests import create_nodes, deployment
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.names import PULL_EVENTS
from tasks.settings import NatsSettings

WARM_TIMEOUT = 90.0


@dataclass
class DrillCluster:
    node: str
    containerd: Containerd
    kube: FakeKubeAPI
    nats: NatsServer
    redis: RedisServer
    bus: NatsBus
    events: Events
    watcher: product.ProductProcess
    worker: product.ProductProcess

    def deploy(self, name: str, image: str) -> None:
        body = deployment(name, image, replicas=0)
        client.AppsV1Api(self.kube.api_client()).create_namespaced_deployment("default", body)

    def wait_warm(self, ref: str, timeout: float = WARM_TIMEOUT) -> float:
        return wait_for(lambda: ref in self.containerd.image_refs(), timeout, ref, self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in (self.watcher, self.worker))


@contextmanager
def drill_cluster(workdir: Path, registries: list[str], **settings: str) -> Iterator[DrillCluster]:
    tag = uuid.uuid4().hex[:6]
    base = workdir / f"d{tag}"
    node = f"drill-{tag}"
    with (
        NatsServer(base / "nats") as nats,
        RedisServer(base / "redis", durable=True) as redis,
        FakeKubeAPI(bookmark_interval=0.5) as kube,
        Containerd(base, "node", insecure_registries=registries) as containerd,
    ):
        create_nodes(kube.api_client(), [node])
        env = product.product_env(
            broker_url=f"{redis.url}/0",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(base / "kubeconfig"),
        )
        env.update(
            WARM_PULL_RETRY_BACKOFF_MAX="2",
            WARM_DISK_BUDGET_PERCENT="99",
            WARM_METRICS_PORT="0",
            WARM_HEALTH_PORT="0",
        )
        env.update(settings)
        worker = product.worker(node, containerd.endpoint, env, base / "logs").start()
        watcher = product.watcher(env, base / "logs").start()
        bus = NatsBus(NatsSettings(url=nats.url))
        events = Events.follow(bus, f"{PULL_EVENTS}.>")
        try:
            yield DrillCluster(node, containerd, kube, nats, redis, bus, events, watcher, worker)
        finally:
            bus.close()
            watcher.stop()
            worker.stop()
