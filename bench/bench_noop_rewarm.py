"""No-op re-warm benchmark: what re-warming a node that already holds every image costs, through
Celery, against one pull task per image (the naive design).

    python bench/bench_noop_rewarm.py [--images 2000] [--latest-share 0.1] [--rounds 15]

Why: beat re-warms every node each interval, and on a healthy cluster almost every re-warm finds
nothing to pull. That no-op is the product's steady-state cost on each of thousands of nodes and
on the registry they share.

Setup, all real and on loopback: Redis (the broker), NATS (the catalog), a registry, containerd
and ``python -m worker`` on every default setting (WARM_REFRESH_TAGS=latest included). The
node's slice is written as the watcher writes it (a class slice and the node's pointer; tags,
no digests); ``--latest-share`` of the images are ``:latest`` tags, which the default policy
pulls again on every re-warm to follow a tag that moved. The worker's reconcile on start pulls
them all; from then on the node is warm.

Measured per round, the two sides alternating which goes first:

* product: one re-warm task (what beat sends each node), from the message sent to the worker's
  re-warm report on NATS;
* baseline: one pull task per image of the slice, from the first message sent to the last image's
  pull report on NATS.

For each: wall time, the worker process's CPU (utime + stime from /proc/<pid>/stat, every
thread), and the HTTP requests the registry served meanwhile (its own access log).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import Containerd, Registry, ensure_system_packages, product, push_image
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, PullResult, SliceImage, Trigger
from tasks.names import PULL_IMAGE, REWARM_NODE, pull_events_subject, rewarm_events_subject
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings

NODE = "bench-noop"
TIMEOUT = 1800.0
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
# This shared machine's disk may be fuller than the default budget; not what is measured.
HARNESS_SETTINGS = {"WARM_DISK_BUDGET_PERCENT": "99", "WARM_METRICS_PORT": "0"}


@dataclass
class Sample:
    wall_ms: float
    cpu_ms: float
    requests: int


@dataclass
class Side:
    label: str
    run: Callable[[], None]
    samples: list[Sample] = field(default_factory=list)


class Observer:
    """The worker's reports on NATS: re-warm reports, and pull results of pull tasks."""

    def __init__(self, bus: NatsBus) -> None:
        self._changed = threading.Condition()
        self.rewarms: list[dict[str, object]] = []
        self.task_pulls = 0
        bus.subscribe(rewarm_events_subject(NODE), self._on_rewarm)
        bus.subscribe(pull_events_subject(NODE), self._on_pull)

    def _on_rewarm(self, _subject: str, data: bytes) -> None:
        with self._changed:
            self.rewarms.append(json.loads(data))
            self._changed.notify_all()

    def _on_pull(self, _subject: str, data: bytes) -> None:
        if PullResult.from_json(data).trigger is Trigger.TASK:
            with self._changed:
                self.task_pulls += 1
                self._changed.notify_all()

    def wait(self, check: Callable[[], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(check, TIMEOUT):
                raise TimeoutError(f"the worker did not report {what} in {TIMEOUT:.0f}s")


def worker_cpu_ms(pid: int) -> float:
    """utime + stime of the whole process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def registry_requests(registry: Registry) -> list[str]:
    lines = registry.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "HTTP/1.1" in line]


def settled_requests(registry: Registry) -> int:
    """The registry's request count once its access log stops growing (it logs on completion)."""
    count = len(registry_requests(registry))
    while True:
        time.sleep(0.3)
        now = len(registry_requests(registry))
        if now == count:
            return count
        count = now


def measure(run: Callable[[], None], pid: int, registry: Registry) -> Sample:
    requests, cpu, started = settled_requests(registry), worker_cpu_ms(pid), time.perf_counter()
    run()
    wall = (time.perf_counter() - started) * 1000
    cpu_used = worker_cpu_ms(pid) - cpu
    return Sample(wall, cpu_used, settled_requests(registry) - requests)


def push_images(registry: Registry, count: int, latest_share: float) -> list[str]:
    """``count`` images of distinct content, ``latest_share`` of them tagged ``latest``."""
    latest = round(count * latest_share)
    run = uuid.uuid4().hex[:6]

    def push(index: int) -> str:
        tag = "latest" if index < latest else "v1"
        return push_image(registry.host, f"noop-{run}/app-{index:04d}", tag, size_mib=0.01).ref

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(push, range(count)))


def product_rewarm(client: Celery, observer: Observer, images: int) -> Callable[[], None]:
    def run() -> None:
        seen = len(observer.rewarms)
        client.send_task(REWARM_NODE, kwargs={"node": NODE}, queue=queue_for_node(NODE))
        observer.wait(lambda: len(observer.rewarms) > seen, "its re-warm")
        report = observer.rewarms[-1]
        if report["pulled"] or report["failed"] or report["retrying"]:
            raise RuntimeError(f"not a no-op re-warm: {report}")
        if report["present"] != images:
            raise RuntimeError(f"re-warm saw {report['present']} of {images} images: {report}")

    return run


def pull_task_per_image(client: Celery, observer: Observer, refs: list[str]) -> Callable[[], None]:
    def run() -> None:
        seen = observer.task_pulls
        with client.producer_or_acquire() as producer:
            for ref in refs:
                client.send_task(
                    PULL_IMAGE,
                    kwargs={"node": NODE, "image": ref},
                    queue=queue_for_node(NODE),
                    producer=producer,
                )
        observer.wait(lambda: observer.task_pulls >= seen + len(refs), "every pull task")

    return run


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = (
        statistics.quantiles(ordered, n=10, method="inclusive")[-1]
        if len(ordered) > 1
        else ordered[0]
    )
    return f"{statistics.median(ordered):>9.0f} {p90:>7.0f} {ordered[0]:>7.0f}..{ordered[-1]:<7.0f}"


def report(sides: list[Side], args: argparse.Namespace, latest: int) -> None:
    print(
        f"No-op re-warm through Celery: {args.images} images per node ({latest} :latest), "
        f"{args.rounds} alternating rounds;"
    )
    print("containerd, Redis, NATS and a registry on loopback; python -m worker on defaults")
    print("(WARM_REFRESH_TAGS=latest). CPU: the worker process, all threads (/proc);")
    print("registry requests: the registry's access log.")
    print()
    print(f"{'case':<40} {'':>6} {'median':>9} {'p90':>7} {'min..max':>15}")
    for side in sides:
        for name, values in (
            ("wall ms", [s.wall_ms for s in side.samples]),
            ("CPU ms", [s.cpu_ms for s in side.samples]),
            ("reqs", [float(s.requests) for s in side.samples]),
        ):
            label = side.label if name == "wall ms" else ""
            print(f"{label:<40} {name:>7} {spread(values)}")
    product_side, baseline = sides
    for name, pick in (("wall", "wall_ms"), ("CPU", "cpu_ms")):
        ours = statistics.median(getattr(s, pick) for s in product_side.samples)
        theirs = statistics.median(getattr(s, pick) for s in baseline.samples)
        print(f"median {name}: baseline / product = {theirs / max(ours, 1e-9):.1f}x")
    print()
    print("The product's registry requests are the :latest manifests it checks for a moved tag")
    print("(WARM_REFRESH_TAGS=latest); per-image pull tasks find the tag present and never ask.")


def run(workdir: Path, args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(workdir / "redis"))
        nats = stack.enter_context(NatsServer(workdir / "nats"))
        registry = stack.enter_context(Registry(workdir / "registry"))
        node = stack.enter_context(Containerd(workdir, "node", insecure_registries=[registry.host]))
        bus = stack.enter_context(NatsBus(NatsSettings(url=nats.url)))
        print(f"pushing {args.images} images to {registry.host} ...", file=sys.stderr, flush=True)
        refs = push_images(registry, args.images, args.latest_share)
        CatalogStore(bus).put_slice(NodeSlice(NODE, tuple(SliceImage(ref) for ref in refs)))
        observer = Observer(bus)
        broker = f"{redis.url}/0"
        env = product.product_env(
            broker_url=broker, nats_url=nats.url, kubeconfig=None, **HARNESS_SETTINGS
        )
        worker = product.worker(NODE, node.endpoint, env, workdir / "logs").start()
        stack.callback(worker.stop)
        client = Celery("bench", broker=broker)
        client.conf.update(task_serializer="json", accept_content=["json"])
        stack.callback(client.close)
        print("the worker's reconcile on start warms the node ...", file=sys.stderr, flush=True)
        observer.wait(
            lambda: any(r["trigger"] == Trigger.START and r["pulled"] for r in observer.rewarms),
            "its reconcile on start",
        )
        if worker.pid is None:
            raise RuntimeError(f"the worker is not running:\n{worker.log_tail()}")
        sides = [
            Side("product: one re-warm task", product_rewarm(client, observer, len(refs))),
            Side("baseline: one pull task per image", pull_task_per_image(client, observer, refs)),
        ]
        for side in sides:  # warm-up: connections, code paths; not measured
            side.run()
        for index in range(args.rounds):
            for side in sides[:: -1 if index % 2 else 1]:
                side.samples.append(measure(side.run, worker.pid, registry))
    report(sides, args, round(args.images * args.latest_share))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latest-share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    ensure_system_packages()
    with scratch_dir("bn-") as workdir:
        return run(workdir, args)


if __name__ == "__main__":
    sys.exit(main())
