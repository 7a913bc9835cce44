"""The README's first command: the whole product on a simulated 3-node cluster, on this machine.

Everything is real but the Kubernetes API (an HTTP double, seeded with sample workloads): a
private Redis and NATS, a registry with sample images, one containerd per node, and the
product's watcher, one worker per node, beat and Flower, each started as in production.
It prints where Flower, kubectl's kubeconfig and every process's probe ports are, then each
image as it becomes warm. However it ends (Ctrl-C, even through a pipe such as ``| tee log``,
SIGTERM, SIGHUP when the terminal closes, or an error), it stops every process and removes its
work directory: images, registry blobs and runtime state take hundreds of MB.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client

from localcluster import manifests, product
from localcluster.containerd import Containerd
from localcluster.harness import wait_for
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
# Pushed but used by no workload: the README's `kubectl create deployment` warms it live.
SPARE = ("samples/hello", 6.0)
FLOWER_READY = 30.0  # seconds for Flower to answer its health check
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KUBECTL = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "kubectl"


class Stopped(BaseException):
    """A stop signal arrived: unwinds whatever the demo was doing, start-up included."""


@dataclass
class Probes:
    """One process's own /metrics and /healthz ports: processes on one machine share none."""

    metrics: int
    health: int

    @classmethod
    def pick(cls) -> Probes:
        return cls(metrics=free_port(), health=free_port())

    def env(self) -> dict[str, str]:
        return {"WARM_METRICS_PORT": str(self.metrics), "WARM_HEALTH_PORT": str(self.health)}

    def describe(self) -> str:
        return (
            f"metrics http://127.0.0.1:{self.metrics}/metrics  "
            f"health http://127.0.0.1:{self.health}/healthz"
        )


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stack: list[Any] = []  # everything started, stopped in reverse order
        self.flower_port = free_port()
        self.flower_password = secrets.token_urlsafe(12)
        self.probes: dict[str, Probes] = {}
        self.endpoints: dict[str, str] = {}

    def run(self) -> None:
        ensure_system_packages()
        redis, nats, registry = self._services()
        images = [push_image(registry.host, repo, "v1", size_mib=size) for repo, size in SAMPLES]
        push_image(registry.host, SPARE[0], "v1", size_mib=SPARE[1])
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
        self._announce(env, registry.host)
        self._follow(nats.url)

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
        # Flower first, and listening, before anything sends a task: task events reach whoever
        # listens at that moment, so the first warm-up shows in Flower too.
        self._keep(product.flower(self.flower_port, env, logs)).start()
        flower = f"http://127.0.0.1:{self.flower_port}/healthcheck"
        wait_for(lambda: product.answers(flower), FLOWER_READY, "Flower")
        for name, node in nodes.items():
            probes = self.probes[f"worker-{name}"] = Probes.pick()
            self.endpoints[f"worker-{name}"] = node.endpoint
            self._keep(product.worker(name, node.endpoint, {**env, **probes.env()}, logs)).start()
        probes = self.probes["watcher"] = Probes.pick()
        self._keep(product.watcher({**env, **probes.env()}, logs)).start()
        self._keep(product.celery("beat", ["beat", "--loglevel=INFO"], env, logs)).start()

    def _announce(self, env: dict[str, str], registry: str) -> None:
        exports = " ".join(
            f"{key}={env[key]}" for key in ("KUBECONFIG", "WARM_BROKER_URL", "WARM_NATS_URL")
        )
        kubectl = "kubectl" if shutil.which("kubectl") or not KUBECTL.exists() else KUBECTL
        processes = [
            f"    {name:<15} {probes.describe()}"
            + (f"  runtime {self.endpoints[name]}" if name in self.endpoints else "")
            for name, probes in self.probes.items()
        ]
        say(
            f"\nwarm-images is running on a simulated cluster of {len(NODES)} nodes.\n"
            f"  Flower:    http://127.0.0.1:{self.flower_port}  (user admin, password "
            f"{self.flower_password})\n"
            f"  Registry:  {registry}  (samples/web, api, migrate and hello, tag v1)\n"
            f"  Processes, each with its own probe ports:\n" + "\n".join(processes) + "\n"
            f"    {'beat':<15} no probe ports (celery beat)\n"
            f"    {'flower':<15} http://127.0.0.1:{self.flower_port}\n"
            f"  Logs:      {self.workdir / 'logs'}\n"
            f"  Try, in another shell:\n"
            f"    export {exports}\n"
            f"    {kubectl} get nodes\n"
            f"    {kubectl} create deployment hello --image={registry}/{SPARE[0]}:v1\n"
            f"    celery -A tasks warm-status\n"
            f"    celery -A tasks rewarm --wait\n"
            "Press Ctrl-C to stop everything.\n"
        )

    def _follow(self, nats_url: str) -> None:
        with NatsBus(NatsSettings(url=nats_url)) as bus:
            bus.subscribe("warm.events.pull.>", _print_pull)
            threading.Event().wait()  # until a stop signal raises Stopped here


def say(text: str) -> None:
    """Print, surviving a reader that went away (``| tee`` killed by the same Ctrl-C, or a
    closed terminal): the demo must still stop its processes and clean up."""
    try:
        print(text, flush=True)
    except OSError:  # BrokenPipeError, or EIO from a hung-up terminal
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no error again, nor at exit's flush


def _print_pull(_subject: str, data: bytes) -> None:
    event = json.loads(data)
    size = f"{event['size'] / 2**20:.1f} MiB" if event.get("size") else ""
    say(
        f"  {event['node']:<8} {event['outcome']:<8} {event['image']:<45} "
        f"{event['seconds']:.2f}s {size} {event.get('reason', '')}"
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


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    for each in STOP_SIGNALS:  # one stop is enough; the clean-up must not be interrupted
        signal.signal(each, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def main() -> int:
    if os.geteuid() != 0:
        print("the local cluster runs containerd, which needs root")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    demo = Demo(workdir)
    failed = False
    try:
        for signum in STOP_SIGNALS:  # inside the try: a signal from now on still cleans up
            signal.signal(signum, _raise_stopped)
        say(f"warm-images demo: work directory {workdir} (removed when the demo stops)")
        demo.run()
    except Stopped:
        pass
    except Exception:
        failed = True
        raise
    finally:
        say("\nstopping...")
        demo.stop()
        _remove(workdir, keep_logs=failed)
    return 0


def _remove(workdir: Path, *, keep_logs: bool) -> None:
    """Remove the work directory; after a failure keep its logs (kilobytes) to read why."""
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"stopped; removed {workdir}")
        return
    for child in workdir.iterdir():
        if child.name != "logs":
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    say(f"stopped after an error; the logs are kept in {workdir / 'logs'}")


if __name__ == "__main__":
    raise SystemExit(main())
