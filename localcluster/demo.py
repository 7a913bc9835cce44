"""The README's first command: the whole product on a simulated 3-node cluster, on this machine.

Everything is real but the Kubernetes API (an HTTP double, seeded with sample workloads): a
private Redis and NATS, a registry with sample images, one containerd per node, and the
product's watcher, one worker per node, beat and Flower, each started as in production.
It prints where Flower is and each image as it becomes warm, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from kubernetes import client

from localcluster import manifests, product
from localcluster.containerd import Containerd
from localcluster.images import PushedImage, push_image
from localcluster.kubeapi import FakeKubeAPI
from localcluster.manifests import create_nodes
from localcluster.packages import ensure_system_packages
from localcluster.ports import free_port
from localcluster.registry import Registry
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.settings import NatsSettings

NODES = ("node-1", "node-2", "node-3")
SAMPLES = (("samples/web", 8.0), ("samples/api", 12.0), ("samples/migrate", 4.0))


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stack: list[Any] = []  # everything started, stopped in reverse order
        self.flower_port = free_port()
        self.flower_password = secrets.token_urlsafe(12)

    def run(self, stop: threading.Event) -> None:
        ensure_system_packages()
        redis, nats, registry = self._services()
        images = [push_image(registry.host, repo, "v1", size_mib=size) for repo, size in SAMPLES]
        kube = self._keep(FakeKubeAPI(bookmark_interval=1.0).start())
        nodes = {n: self._keep(Containerd(self.workdir, n, insecure_registries=[registry.host]))
                 for n in NODES}  # fmt: skip
        for node in nodes.values():
            node.start()
        api = kube.api_client()
        seed_cluster(api, images)
        env = product.product_env(
            broker_url=f"{redis.url}/0",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(self.workdir / "kubeconfig"),
            WARM_REWARM_INTERVAL="120",
            FLOWER_BASIC_AUTH=f"admin:{self.flower_password}",
        )
        self._start_product(env, nodes)
        self._announce(env)
        self._follow(nats.url, stop)

    def stop(self) -> None:
        for item in reversed(self.stack):
            item.stop()

    def _keep(self, item: Any) -> Any:
        self.stack.append(item)
        return item

    def _services(self) -> tuple[RedisServer, NatsServer, Registry]:
        redis = self._keep(RedisServer(self.workdir / "redis"))
        nats = self._keep(NatsServer(self.workdir / "nats"))
        registry = self._keep(Registry(self.workdir / "registry"))
        for service in (redis, nats, registry):
            service.start()
        return redis, nats, registry

    def _start_product(self, env: dict[str, str], nodes: dict[str, Containerd]) -> None:
        logs = self.workdir / "logs"
        for name, node in nodes.items():
            self._keep(product.worker(name, node.endpoint, env, logs)).start()
        self._keep(product.watcher(env, logs)).start()
        self._keep(product.celery("beat", ["beat", "--loglevel=INFO"], env, logs)).start()
        flower = ["flower", f"--port={self.flower_port}", "--address=127.0.0.1"]
        self._keep(product.celery("flower", flower, env, logs)).start()

    def _announce(self, env: dict[str, str]) -> None:
        exports = " ".join(
            f"{key}={env[key]}" for key in ("WARM_BROKER_URL", "WARM_NATS_URL", "KUBECONFIG")
        )
        print(
            f"\nwarm-images is running on a simulated cluster of {len(NODES)} nodes.\n"
            f"  Flower:  http://127.0.0.1:{self.flower_port}  (user admin, password "
            f"{self.flower_password})\n"
            f"  Logs:    {self.workdir / 'logs'}\n"
            f"  Try, in another shell:\n"
            f"    {exports} celery -A tasks warm-status\n"
            f"    {exports} celery -A tasks rewarm --wait\n"
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )

    def _follow(self, nats_url: str, stop: threading.Event) -> None:
        with NatsBus(NatsSettings(url=nats_url)) as bus:
            bus.subscribe("warm.events.pull.>", _print_pull)
            stop.wait()


def _print_pull(_subject: str, data: bytes) -> None:
    event = json.loads(data)
    size = f"{event['size'] / 2**20:.1f} MiB" if event.get("size") else ""
    print(
        f"  {event['node']:<8} {event['outcome']:<8} {event['image']:<45} "
        f"{event['seconds']:.2f}s {size} {event.get('reason', '')}",
        flush=True,
    )


def seed_cluster(api: client.ApiClient, images: list[PushedImage]) -> None:
    """Nodes and a few sample workloads: two Deployments (one scaled to zero) and a Pod."""
    create_nodes(api, NODES)
    web, api_image, migrate = (image.ref for image in images)
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", manifests.deployment("web", web, replicas=3))
    apps.create_namespaced_deployment("default", manifests.deployment("api", api_image, replicas=0))
    report = manifests.pod("report", web, init_image=migrate)
    client.CoreV1Api(api).create_namespaced_pod("default", report)


def _remove_all_but_logs(workdir: Path) -> None:
    """Images, registry blobs and runtime state can be hundreds of MB: only the logs stay."""
    for child in workdir.iterdir():
        if child.name == "logs":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def main() -> int:
    if os.geteuid() != 0:
        print("the local cluster runs containerd, which needs root")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    demo = Demo(workdir)
    try:
        demo.run(stop)
    finally:
        print("\nstopping...", flush=True)
        demo.stop()
        _remove_all_but_logs(workdir)
        print(f"stopped. Logs are kept in {workdir / 'logs'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
