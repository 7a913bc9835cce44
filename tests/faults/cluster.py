"""A one-node simulated cluster with its own NATS and broker, so a drill may break them.

Every product setting is left at its default, so a drill shows what users get; the only
settings given are those of this machine rather than of the product (HARNESS_SETTINGS), and a
drill that changes another says so in its figures (``DrillCluster.settings``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from localcluster import Containerd, FakeKubeAPI, product
from localcluster.harness import Events, unavailable, wait_for
from localcluster.manifests import create_nodes, deployment
from localcluster.services import NatsServer, RedisServer, rabbitmq_answers, rabbitmq_vhost
from tasks.bus import NatsBus
from tasks.models import Outcome, PullResult
from tasks.names import PULL_EVENTS
from tasks.settings import NatsSettings
from worker.runtime.cri import CriRuntime

WARM_TIMEOUT = 90.0

# Not product behaviour: this shared machine's disk is fuller than the default budget, and
# the probes' fixed ports would collide between drills.
HARNESS_SETTINGS = {
    "WARM_DISK_BUDGET_PERCENT": "99",
    "WARM_METRICS_PORT": "0",
    "WARM_HEALTH_PORT": "0",
}

# Brokers a drill can run on: Redis that persists every write, Redis without persistence
# (the chart's default: a restart empties it), RabbitMQ (a vhost of the machine's server).
BROKERS = ("redis", "redis-ephemeral", "rabbitmq")


@dataclass
class DrillCluster:
    node: str
    containerd: Containerd
    kube: FakeKubeAPI
    nats: NatsServer
    redis: RedisServer | None  # None on RabbitMQ
    broker_url: str
    bus: NatsBus
    events: Events
    watcher: product.ProductProcess
    worker: product.ProductProcess
    settings: dict[str, str]  # product settings this drill changed from the defaults

    def deploy(self, name: str, image: str) -> None:
        body = deployment(name, image, replicas=0)
        client.AppsV1Api(self.kube.api_client()).create_namespaced_deployment("default", body)

    def wait_warm(self, ref: str, timeout: float = WARM_TIMEOUT) -> float:
        return wait_for(lambda: self.holds(ref), timeout, ref, self.logs)

    def holds(self, ref: str) -> bool:
        """Whether the node holds ``ref``, asked through CRI as kubelet asks."""
        runtime = CriRuntime(self.containerd.endpoint)
        try:
            return runtime.image_status(ref) is not None
        finally:
            runtime.close()

    def first_pulled(self, ref: str, *, after: float) -> PullResult:
        """The first report of ``ref`` pulled since ``after`` (epoch seconds), once it arrives."""

        def pulled() -> list[PullResult]:
            found = [e for e in self.events.of(ref) if e.outcome is Outcome.PULLED and e.at > after]
            return sorted(found, key=lambda event: event.at)

        wait_for(lambda: bool(pulled()), 10, f"the report of {ref}", self.logs)
        return pulled()[0]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in (self.watcher, self.worker))


@contextmanager
def drill_cluster(
    workdir: Path, registries: list[str], *, broker: str = "redis", **settings: str
) -> Iterator[DrillCluster]:
    """The cluster on ``broker`` (one of BROKERS), with ``settings`` changed from defaults."""
    tag = uuid.uuid4().hex[:6]
    base = workdir / f"d{tag}"
    node = f"drill-{tag}"
    with ExitStack() as stack:
        redis = None
        if broker == "rabbitmq":
            if not rabbitmq_answers():
                unavailable("RabbitMQ does not answer on 127.0.0.1:5672")
            broker_url = stack.enter_context(rabbitmq_vhost())
        else:
            durable = broker == "redis"
            redis = stack.enter_context(RedisServer(base / "redis", durable=durable))
            broker_url = f"{redis.url}/0"
        nats = stack.enter_context(NatsServer(base / "nats"))
        kube = stack.enter_context(FakeKubeAPI(bookmark_interval=0.5))
        containerd = stack.enter_context(Containerd(base, "node", insecure_registries=registries))
        create_nodes(kube.api_client(), [node])
        env = product.product_env(
            broker_url=broker_url,
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(base / "kubeconfig"),
        )
        env.update(HARNESS_SETTINGS)
        env.update(settings)
        worker = product.worker(node, containerd.endpoint, env, base / "logs").start()
        stack.callback(worker.stop)
        watcher = product.watcher(env, base / "logs").start()
        stack.callback(watcher.stop)
        bus = stack.enter_context(NatsBus(NatsSettings(url=nats.url)))
        events = Events.follow(bus, f"{PULL_EVENTS}.>")
        yield DrillCluster(
            node, containerd, kube, nats, redis, broker_url, bus, events, watcher, worker,
            dict(settings),
        )  # fmt: skip
