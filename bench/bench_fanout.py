"""Fan-out of a re-warm at scale: 5,000 nodes x 2,000 images, against real Redis and NATS.

    python bench/bench_fanout.py [--nodes 5000] [--images 2000] [--sample-nodes 50]

Why: a re-warm must reach every node, and the obvious design (one pull task per node and
image) costs nodes x images broker messages: 10 million for a large cluster, every interval.
The product sends one ``rewarm_node(node, revision)`` per node instead and lets each node diff
its slice of the catalog (NATS KV) against its runtime. This measures both on a private Redis
(the broker) and NATS (the catalog), started on free ports, with no worker consuming, so the
queues hold exactly what was sent:

* the product: the catalog written as the watcher writes it (one ``nodes.<node>`` slice per
  node, ``--images`` images each), then ``dispatch_rewarm`` timed as beat runs it with no
  pacing window (the window only spreads the same sends over time);
* the naive baseline: one ``pull_image(node, image)`` per pair, measured on ``--sample-nodes``
  nodes and extrapolated linearly to all nodes (messages, seconds and memory all grow with
  the pair count).

Messages are the sum of the node queues' lengths, memory is Redis ``used_memory`` after minus
before. Targets for the product: at most 5,000 messages, 5 s and 50 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage
from tasks.names import PULL_IMAGE
from tasks.rewarm import BATCH
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings

TARGETS = {"messages": 5000, "seconds": 5.0, "memory_mb": 50.0}


@dataclass
class Measured:
    messages: int
    seconds: float
    memory_mb: float

    def scaled(self, factor: float) -> Measured:
        return Measured(
            round(self.messages * factor), self.seconds * factor, self.memory_mb * factor
        )


def main() -> int:
    options = _options()
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as workdir:
        redis_server = RedisServer(Path(workdir) / "redis").start()
        nats_server = NatsServer(Path(workdir) / "nats").start()
        try:
            return _run(options, redis_server.url, nats_server.url)
        finally:
            nats_server.stop()
            redis_server.stop()


def _run(options: argparse.Namespace, redis_url: str, nats_url: str) -> int:
    # The product's own Celery app and settings, pointed at the private broker and NATS.
    os.environ.update(WARM_BROKER_URL=f"{redis_url}/0", WARM_NATS_URL=nats_url)
    from tasks.app import app
    from tasks.rewarm import dispatch_rewarm

    client = redis.Redis.from_url(f"{redis_url}/0")
    nodes = [f"node-{n:05d}" for n in range(options.nodes)]
    images = [
        f"registry.example.com/team-{i % 40}/svc-{i:04d}:v1.{i % 17}" for i in range(options.images)
    ]
    with NatsBus(NatsSettings(url=nats_url, connect_timeout=30)) as bus:
        seeded = _seed(bus, nodes, images)
        print(f"catalog: {len(nodes)} node slices x {len(images)} images written in {seeded:.1f}s")

        before = _used_memory(client)
        started = time.perf_counter()
        sent = dispatch_rewarm(app, bus, expires=1800)  # as beat sends, without its window
        product = Measured(
            _queued(client, nodes), time.perf_counter() - started, _used_memory(client) - before
        )
    assert len(sent) == len(nodes), "every node gets exactly one re-warm"
    client.flushdb()

    sample = nodes[: options.sample_nodes]
    naive_sample = _naive(app, client, sample, images)
    naive = naive_sample.scaled(len(nodes) / len(sample))
    _report(options, product, naive_sample, naive)
    return 0 if _meets_targets(product) else 1


def _seed(bus: NatsBus, nodes: list[str], images: list[str]) -> float:
    started = time.perf_counter()
    catalog = CatalogStore(bus)
    node_slice = tuple(SliceImage(image) for image in images)
    for node in nodes:
        catalog.put_slice(NodeSlice(node, node_slice))
    return time.perf_counter() - started


def _naive(app: Celery, client: redis.Redis, nodes: list[str], images: list[str]) -> Measured:
    """One pull task per (node, image), sent as the product sends (pipelined, no declares), so
    the difference measured is the design's, not the sending code's."""
    before = _used_memory(client)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer, producer.batch(BATCH):
        for node in nodes:
            queue = queue_for_node(node)
            for image in images:
                kwargs = {"node": node, "image": image}
                app.send_task(
                    PULL_IMAGE,
                    kwargs=kwargs,
                    queue=queue,
                    producer=producer,
                    declare=[],
                    argsrepr="()",
                    kwargsrepr=repr(kwargs),
                )
    seconds = time.perf_counter() - started
    return Measured(_queued(client, nodes), seconds, _used_memory(client) - before)


def _queued(client: redis.Redis, nodes: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.llen(queue_for_node(node))
    return sum(int(length) for length in pipe.execute())


def _used_memory(client: redis.Redis) -> float:
    info = client.info("memory")
    return int(info["used_memory"]) / 2**20


def _meets_targets(measured: Measured) -> bool:
    return (
        measured.messages <= TARGETS["messages"]
        and measured.seconds <= TARGETS["seconds"]
        and measured.memory_mb <= TARGETS["memory_mb"]
    )


def _report(
    options: argparse.Namespace, product: Measured, naive_sample: Measured, naive: Measured
) -> None:
    pairs = f"{options.nodes} nodes x {options.images} images"
    rows = [
        ("one rewarm_node per node (product)", product),
        (f"one task per pair, {options.sample_nodes}-node sample (measured)", naive_sample),
        (f"one task per pair, {options.nodes} nodes (extrapolated)", naive),
    ]
    print(f"\nre-warm fan-out, {pairs}, Redis broker")
    print(f"{'design':<50} {'messages':>12} {'seconds':>10} {'Redis MB':>10}")
    for label, measured in rows:
        print(
            f"{label:<50} {measured.messages:>12,} {measured.seconds:>10.2f} "
            f"{measured.memory_mb:>10.1f}"
        )
    verdict = "meets" if _meets_targets(product) else "MISSES"
    print(
        f"\nproduct {verdict} the targets (<= {TARGETS['messages']:,} messages, "
        f"<= {TARGETS['seconds']:.0f} s, <= {TARGETS['memory_mb']:.0f} MB); the naive design "
        f"needs {naive.messages / max(product.messages, 1):,.0f}x the messages."
    )


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sample-nodes", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
