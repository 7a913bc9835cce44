"""A simulated cluster for the whole flow: the API double, one containerd per node, and the
product's own processes (watcher and one worker per node) started as users start them."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import pytest
from kubernetes import client

from localcluster import Containerd, FakeKubeAPI, Registry, harness, product
from localcluster.harness import unavailable
from localcluster.manifests import create_nodes
from localcluster.ports import free_port
from localcluster.services import NatsServer, RedisServer, rabbitmq_answers, rabbitmq_vhost
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.settings import NatsSettings
from worker.runtime._cri import api_pb2 as pb
from worker.runtime._cri import api_pb2_grpc as rpc


class CriProbe:
    """Reads a node's images straight through CRI, independent of the product's driver."""

    def __init__(self, endpoint: str) -> None:
        self._channel = grpc.insecure_channel(endpoint)
        self._images = rpc.ImageServiceStub(self._channel)

    def tags(self) -> set[str]:
        answer = self._images.ListImages(pb.ListImagesRequest(), timeout=10)
        return {tag for image in answer.images for tag in image.repo_tags}

    def digests_of(self, reference: str) -> set[str]:
        """The name@digest names of the image ``reference`` names now (none: not held)."""
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=reference))
        answer = self._images.ImageStatus(request, timeout=10)
        return set(answer.image.repo_digests) if answer.HasField("image") else set()

    def remove(self, reference: str) -> None:
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=reference))
        self._images.RemoveImage(request, timeout=30)

    def pull(self, reference: str) -> str:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=reference))
        return str(self._images.PullImage(request, timeout=120).image_ref)

    def close(self) -> None:
        self._channel.close()


@dataclass
class SimCluster:
    kube: FakeKubeAPI
    api: client.ApiClient
    nodes: dict[str, Containerd]
    probes: dict[str, CriProbe]
    env: dict[str, str]
    logdir: Path
    processes: list[product.ProductProcess] = field(default_factory=list)

    def start(self, process: product.ProductProcess) -> product.ProductProcess:
        self.processes.append(process.start())
        return process

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A tasks ARGS`` as a user would, in the cluster's environment."""
        argv = [sys.executable, "-m", "celery", "-A", "tasks", *args]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self.processes)

    def stop(self) -> None:
        """Stop the product's processes, then the probes and runtimes they used."""
        for process in self.processes:
            process.stop()
        for probe in self.probes.values():
            probe.close()
        for runtime in self.nodes.values():
            runtime.stop()


@pytest.fixture(scope="module")
def sim_cluster(
    workdir: Path,
    redis_server: RedisServer,
    nats_server: NatsServer,
    registry: Registry,
) -> Iterator[SimCluster]:
    with run_cluster(workdir, registry, f"{redis_server.url}/1", nats_server.url) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker_cluster(
    request: pytest.FixtureRequest, workdir: Path, redis_server: RedisServer, registry: Registry
) -> Iterator[SimCluster]:
    """A cluster on each broker, with a NATS of its own: a re-warm of "every node" then means
    this cluster's nodes, not those other modules' clusters left in a shared catalog."""
    broker = request.param
    with contextlib.ExitStack() as stack:
        nats = stack.enter_context(NatsServer(workdir / f"nats-{uuid.uuid4().hex[:6]}"))
        if broker == "redis":
            broker_url = f"{redis_server.url}/2"
        else:
            if not rabbitmq_answers():
                unavailable("RabbitMQ is not answering on 127.0.0.1:5672")
            broker_url = stack.enter_context(rabbitmq_vhost())
        cluster = stack.enter_context(
            run_cluster(workdir, registry, broker_url, nats.url, WARM_CATALOG_GRACE_PERIOD="0")
        )
        yield cluster


@contextlib.contextmanager
def run_cluster(
    workdir: Path,
    registry: Registry,
    broker_url: str,
    nats_url: str,
    nodes: int = 2,
    **extra_env: str,
) -> Iterator[SimCluster]:
    suffix = uuid.uuid4().hex[:6]
    base = workdir / f"c{suffix}"
    kube = FakeKubeAPI(bookmark_interval=0.5).start()
    names = [f"node-{letter}-{suffix}" for letter in "abcdefgh"[:nodes]]
    runtimes = {
        name: Containerd(base, name[:6], insecure_registries=[registry.host]).start()
        for name in names
    }
    api = kube.api_client()
    create_nodes(api, names)
    kubeconfig = kube.write_kubeconfig(base / "kubeconfig")
    env = product.product_env(
        broker_url=broker_url, nats_url=nats_url, kubeconfig=kubeconfig, **extra_env
    )
    cluster = SimCluster(
        kube,
        api,
        runtimes,
        {n: CriProbe(c.endpoint) for n, c in runtimes.items()},
        env,
        base / "logs",
    )
    try:
        for name, node in runtimes.items():
            cluster.start(product.worker(name, node.endpoint, env, cluster.logdir))
        cluster.start(product.watcher(env, cluster.logdir))
        _wait_until_watching(cluster, nats_url)
        yield cluster
    finally:
        cluster.stop()
        kube.stop()


@contextlib.contextmanager
def run_rewarming_cluster(
    workdir: Path, registry: Registry, broker_url: str, nodes: int, interval: float
) -> Iterator[SimCluster]:
    """A cluster on a NATS of its own with beat running, re-warming every ``interval`` seconds
    at once (no window, no grace period): what a periodic re-warm changes is seen in seconds."""
    with (
        NatsServer(workdir / f"nats-{uuid.uuid4().hex[:6]}") as nats,
        run_cluster(
            workdir,
            registry,
            broker_url,
            nats.url,
            nodes=nodes,
            WARM_REWARM_INTERVAL=str(interval),
            WARM_REWARM_WINDOW="0",
            WARM_CATALOG_GRACE_PERIOD="0",
        ) as running,
    ):
        running.start(
            product.celery("beat", ["beat", "--loglevel=INFO"], running.env, running.logdir)
        )
        yield running


def _wait_until_watching(cluster: SimCluster, nats_url: str, timeout: float = 60) -> None:
    """Until the watcher has published every node's slice: its first lists are done, so what
    a test creates next is timed from a running system, not from the watcher's start-up."""
    deadline = time.monotonic() + timeout
    with NatsBus(NatsSettings(url=nats_url)) as bus:
        while not set(cluster.nodes) <= set(CatalogStore(bus).nodes()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the watcher never published the nodes\n{cluster.logs()}")
            time.sleep(0.1)


def wait_for(check: Callable[[], bool], timeout: float, what: str, cluster: SimCluster) -> float:
    """harness.wait_for, with the cluster's process logs in a timeout's message."""
    return harness.wait_for(check, timeout, what, cluster.logs)


def lists_done(watcher: product.ProductProcess) -> bool:
    return "initial lists done" in watcher.log_tail()


def start_watcher(sim: SimCluster, attempts: int = 3) -> int:
    """The watcher, serving /metrics on a free port; another on a port another process took
    between the pick and the bind (other suites run on this machine), so that what the tests
    read there is this watcher's."""
    for _ in range(attempts):
        port = free_port()
        watcher = product.watcher({**sim.env, "WARM_METRICS_PORT": str(port)}, sim.logdir)
        sim.start(watcher)
        # It binds /metrics before its first lists: once they are done, its log says whether.
        wait_for(partial(lists_done, watcher), 30, "the watcher", sim)
        if "metrics not served" not in watcher.log_tail():
            return port
        watcher.stop()
        sim.processes.remove(watcher)
    raise AssertionError(f"no free port for the watcher's /metrics in {attempts} attempts")
