"""Pull benchmark: the node worker's overhead over raw CRI pulls, measured side by side.

What it measures, on a real containerd pulling from a real registry on loopback:

1. One 100 MiB image: from sending the pull task to the worker's NATS event (the whole product
   path: Celery on Redis, the presence check, the disk budget, the CRI pull, the report),
   against one raw CRI PullImage of another 100 MiB image.
2. Ten 20 MiB images sent to the worker at once, against the same ten-image workload pulled
   raw at the worker's default concurrency (WARM_MAX_CONCURRENT_PULLS, 2): same work, same
   parallelism, so the difference is the product's own cost.

The worker does strictly more than the raw pull, so what is reported is its overhead in
milliseconds (median, p90 and spread of the per-round differences) and the ratio of the
medians; a per-round ratio below 1 is noise, and the spread says how much. Every pull is of an
image with its own content (containerd stores blobs by digest, so pulling the same bytes twice
would measure a cache hit); the page cache is flushed to disk (``sync``) before each side so one
side's writeback does not land on the other; rounds alternate which side goes first. Every
setting is the product's default. Run: ``python bench/bench_pull.py [--rounds N]`` (default 15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import grpc
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import Containerd, Registry, ensure_system_packages, product, push_image
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import Outcome, PullResult
from tasks.names import PULL_IMAGE, pull_events_subject
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, RuntimeSettings
from worker.runtime._cri import api_pb2 as pb
from worker.runtime._cri import api_pb2_grpc as rpc

NODE = "bench-node"
CONCURRENCY = RuntimeSettings().max_concurrent_pulls
TIMEOUT = 300.0


class RawCri:
    """CRI PullImage and nothing else: the baseline a worker cannot beat on one image."""

    def __init__(self, endpoint: str) -> None:
        self._channel = grpc.insecure_channel(endpoint)
        self._images = rpc.ImageServiceStub(self._channel)

    def pull(self, reference: str) -> float:
        started = time.perf_counter()
        request = pb.PullImageRequest(image=pb.ImageSpec(image=reference))
        self._images.PullImage(request, timeout=TIMEOUT)
        return time.perf_counter() - started

    def remove_all(self, prefix: str) -> None:
        """Remove every image under ``prefix``: what one round pulled does not fill the disk
        for the next (the worker would rightly refuse a pull over its disk budget)."""
        listed = self._images.ListImages(pb.ListImagesRequest(), timeout=TIMEOUT)
        for image in listed.images:
            if any(tag.startswith(prefix) for tag in image.repo_tags):
                self._images.RemoveImage(
                    pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=TIMEOUT
                )

    def pull_concurrently(self, references: list[str], concurrency: int) -> float:
        """The whole batch at ``concurrency`` pulls at once, as the worker runs it."""
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(self.pull, references))
        return time.perf_counter() - started


class WorkerClient:
    """Sends pull tasks to the worker's queue and times them by the worker's NATS events."""

    def __init__(self, broker_url: str, bus: NatsBus) -> None:
        self._celery = Celery("bench", broker=broker_url)
        self._celery.conf.update(task_serializer="json", accept_content=["json"])
        self._done: dict[str, tuple[float, PullResult]] = {}
        self._changed = threading.Condition()
        bus.subscribe(pull_events_subject(NODE), self._on_event)

    def warm(self, references: list[str]) -> float:
        """Seconds from sending the first task to the last image reported warm."""
        started = time.perf_counter()
        with self._celery.producer_or_acquire() as producer:
            for reference in references:
                self._celery.send_task(
                    PULL_IMAGE,
                    kwargs={"node": NODE, "image": reference},
                    queue=queue_for_node(NODE),
                    producer=producer,
                )
        finished = max(self._wait(reference) for reference in references)
        return finished - started

    def _on_event(self, _subject: str, data: bytes) -> None:
        at = time.perf_counter()
        result = PullResult.from_json(data)
        with self._changed:
            self._done[result.image] = (at, result)
            self._changed.notify_all()

    def _wait(self, reference: str) -> float:
        with self._changed:
            if not self._changed.wait_for(lambda: reference in self._done, TIMEOUT):
                raise TimeoutError(f"the worker did not report {reference}")
            at, result = self._done[reference]
        if result.outcome is not Outcome.PULLED:
            raise RuntimeError(f"{reference}: {result.outcome} {result.reason}")
        return at

    def close(self) -> None:
        self._celery.close()


def images(registry: Registry, count: int, size_mib: float) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [
        push_image(registry.host, f"bench/img{size_mib:g}m-{i}", tag, size_mib=size_mib).ref
        for i in range(count)
    ]


def alternate(
    rounds: int,
    first: Callable[[], float],
    second: Callable[[], float],
    between: Callable[[], None],
) -> tuple[list[float], list[float]]:
    """Run both sides ``rounds`` times, swapping which goes first, so drift hits both;
    ``between`` runs before each side, untimed."""
    a: list[float] = []
    b: list[float] = []
    for index in range(rounds):
        sides = [(first, a), (second, b)]
        for measure, into in sides[:: -1 if index % 2 else 1]:
            between()
            os.sync()
            into.append(measure())
    return a, b


def fresh(registry: Registry, count: int, size_mib: float) -> Iterator[list[str]]:
    """Batches of new images, pushed when asked for (before a side's clock starts), so the
    registry and the node never hold more than a few rounds' worth."""
    while True:
        yield images(registry, count, size_mib)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    ensure_system_packages()
    with scratch_dir("bp-") as workdir:
        return run(workdir, args.rounds)


def run(workdir: Path, rounds: int) -> int:
    with (
        RedisServer(workdir / "redis") as redis,
        NatsServer(workdir / "nats") as nats,
        Registry(workdir / "registry") as registry,
        Containerd(workdir, "node", insecure_registries=[registry.host]) as node,
        NatsBus(NatsSettings(url=nats.url)) as bus,
    ):
        print(f"pushing test images to {registry.host} ...", file=sys.stderr)
        warmup = images(registry, 2, 1)
        env = product.product_env(
            broker_url=f"{redis.url}/0",
            nats_url=nats.url,
            WARM_METRICS_PORT="0",
            WARM_HEALTH_PORT="0",
        )
        worker = product.worker(NODE, node.endpoint, env, workdir / "logs").start()
        raw = RawCri(node.endpoint)
        client = WorkerClient(f"{redis.url}/0", bus)
        try:
            wait_ready(worker)
            client.warm(warmup[:1])  # connections made, code paths loaded: not measured
            raw.pull(warmup[1])
            one, batch = fresh(registry, 1, 100), fresh(registry, 10, 20)
            clean = partial(raw.remove_all, f"{registry.host}/bench/")
            warm_100, raw_100 = alternate(
                rounds, lambda: client.warm(next(one)), lambda: raw.pull(next(one)[0]), clean
            )
            warm_10, raw_10 = alternate(
                rounds,
                lambda: client.warm(next(batch)),
                lambda: raw.pull_concurrently(next(batch), CONCURRENCY),
                clean,
            )
        finally:
            client.close()
            worker.stop()
    report(rounds, warm_100, raw_100, warm_10, raw_10)
    return 0


def wait_ready(worker: product.ProductProcess) -> None:
    deadline = time.monotonic() + 60
    while " ready." not in worker.log_tail(20_000):
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
        time.sleep(0.1)


def report(
    rounds: int,
    warm_100: list[float],
    raw_100: list[float],
    warm_10: list[float],
    raw_10: list[float],
) -> None:
    print(f"Pull benchmark: containerd CRI, loopback registry; {rounds} alternating rounds,")
    print("sync before each side, every setting at the product's default.")
    print("overhead: worker - baseline per round, ms; ratio: median(worker) / median(baseline)")
    print()
    print(
        f"{'case':<44} {'worker':>8} {'baseline':>8} {'overhead':>9} {'p90':>7} "
        f"{'min..max':>15} {'ratio':>6}"
    )
    row("100 MiB image (baseline: one raw CRI pull)", warm_100, raw_100)
    row(f"10 x 20 MiB (baseline: raw, {CONCURRENCY} at a time)", warm_10, raw_10)
    print()
    for name, worker, raw in (("100 MiB", warm_100, raw_100), ("10 x 20 MiB", warm_10, raw_10)):
        print(f"{name} rounds, worker s: " + " ".join(f"{s:.3f}" for s in worker))
        print(f"{name} rounds, raw s:    " + " ".join(f"{s:.3f}" for s in raw))


def row(case: str, worker: list[float], raw: list[float]) -> None:
    overhead = sorted((w - r) * 1000 for w, r in zip(worker, raw, strict=True))
    p90 = statistics.quantiles(overhead, n=10)[-1] if len(overhead) > 1 else overhead[0]
    spread = f"{overhead[0]:.0f}..{overhead[-1]:.0f}"
    ratio = statistics.median(worker) / statistics.median(raw)
    print(
        f"{case:<44} {statistics.median(worker):>7.3f}s {statistics.median(raw):>7.3f}s "
        f"{statistics.median(overhead):>7.0f}ms {p90:>5.0f}ms {spread:>15} {ratio:>6.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
