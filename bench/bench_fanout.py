"""Fan-out of a periodic re-warm at scale: 5,000 nodes x 2,000 images, real Redis and NATS.

    python bench/bench_fanout.py [--nodes 5000] [--images 2000] [--sample-nodes 50]
                                 [--baseline-nodes 50]

Why: a re-warm must reach every node, and the obvious design (one pull task per node and
image) costs nodes x images broker messages: 10 million for a large cluster, every interval.
The product sends one ``rewarm_node(node, revision)`` per node instead and lets each node diff
its slice of the catalog (NATS KV) against its runtime. The node's side must stay cheap too:
a slice copy per node and a status record listing every image would move gigabytes through
NATS per re-warm. This measures both halves on a private Redis (the broker) and NATS (the
catalog and the status), started on free ports:

* Redis, with no worker consuming, so the queues hold exactly what was sent: the product's
  ``dispatch_rewarm`` as beat runs it with no pacing window (the window only spreads the same
  sends over time), against one ``pull_image(node, image)`` per pair, measured on
  ``--sample-nodes`` nodes and extrapolated linearly (messages, seconds and memory all grow
  with the pair count). Messages are the queues' lengths, memory Redis ``used_memory``.
* NATS, for one periodic re-warm where every node is already warm: bytes in and out as
  nats-server counts them itself (``/varz`` on its monitoring port, after minus before). The
  product: the catalog as the watcher writes it (one class slice, a pointer per node), beat's
  fan-out, and every node's ``NodeAgent.rewarm`` (the worker's own code, over a runtime that
  holds every image), after a first re-warm that brought every node to its steady state: it
  holds its class slice (a slice never changes under its hash) and its status record. The
  baseline, today's design rebuilt here: a slice copy per node (``nodes.<node>``) read whole
  by every re-warm, and a status record naming every image, read and written back whole;
  measured on ``--baseline-nodes`` nodes and extrapolated linearly (each node's traffic is its
  own). Target for the product: at most 100 MB in all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import ClassSlice, SliceImage, SlicePointer
from tasks.names import PULL_IMAGE, rewarm_events_subject
from tasks.rewarm import BATCH
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, Settings, load_settings
from tasks.status import StatusStore
from worker.agent import NodeAgent
from worker.runtime.fake import FakeRuntime

TARGETS = {"messages": 5000, "seconds": 5.0, "memory_mb": 50.0, "nats_mb": 100.0}
BASELINE_BUCKET = "bench-today"  # today's per-node slices, apart from the product's catalog


@dataclass
class Measured:
    messages: int
    seconds: float
    memory_mb: float

    def scaled(self, factor: float) -> Measured:
        return Measured(
            round(self.messages * factor), self.seconds * factor, self.memory_mb * factor
        )


@dataclass
class Traffic:
    """Bytes through NATS, as the server counts them: into it from clients, out to them."""

    bytes_in: float
    bytes_out: float
    seconds: float

    @property
    def mb(self) -> float:
        return (self.bytes_in + self.bytes_out) / 2**20

    def scaled(self, factor: float) -> Traffic:
        return Traffic(self.bytes_in * factor, self.bytes_out * factor, self.seconds * factor)


def nats_counters(server: NatsServer) -> tuple[int, int]:
    """The server's own byte counters: into it from clients, out of it to them."""
    with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=10) as response:
        varz = json.load(response)
    return int(varz["in_bytes"]), int(varz["out_bytes"])


def nats_traffic(server: NatsServer, bus: NatsBus, run: Callable[[], object]) -> Traffic:
    bus.flush()
    bytes_in, bytes_out = nats_counters(server)
    started = time.perf_counter()
    run()
    bus.flush()  # every publish has reached the server before it is read
    seconds = time.perf_counter() - started
    after_in, after_out = nats_counters(server)
    return Traffic(after_in - bytes_in, after_out - bytes_out, seconds)


def main() -> int:
    options = _options()
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as workdir:
        redis_server = RedisServer(Path(workdir) / "redis").start()
        nats_server = NatsServer(Path(workdir) / "nats", monitor=True)
        nats_server.start()
        try:
            return _run(options, redis_server.url, nats_server)
        finally:
            nats_server.stop()
            redis_server.stop()


def _run(options: argparse.Namespace, redis_url: str, nats_server: NatsServer) -> int:
    # The product's own Celery app and settings, pointed at the private broker and NATS.
    os.environ.update(WARM_BROKER_URL=f"{redis_url}/0", WARM_NATS_URL=nats_server.url)
    os.environ["WARM_PULL_SECRETS"] = "false"  # no Kubernetes API here; warm nodes pull nothing
    from tasks.app import app
    from tasks.rewarm import RewarmSent, dispatch_rewarm

    client = redis.Redis.from_url(f"{redis_url}/0")
    nodes = [f"node-{n:05d}" for n in range(options.nodes)]
    images = [
        f"registry.example.com/team-{i % 40}/svc-{i:04d}:v1.{i % 17}" for i in range(options.images)
    ]
    sent: list[RewarmSent] = []

    def fan_out() -> None:
        sent.extend(dispatch_rewarm(app, bus, expires=1800))  # as beat sends, without its window

    with NatsBus(NatsSettings(url=nats_server.url, connect_timeout=30)) as bus:
        seeded = _seed(bus, nodes, images)
        print(
            f"catalog: 1 class slice x {len(images)} images, {len(nodes)} pointers, {seeded:.1f}s"
        )
        agents, runtime = _agents(bus, nodes, images)
        for agent in agents:  # the re-warm before this one: every node warm, its slice held
            agent.rewarm(0, [])

        before = _used_memory(client)
        fanned = nats_traffic(nats_server, bus, fan_out)
        product = Measured(_queued(client, nodes), fanned.seconds, _used_memory(client) - before)
        revision = sent[0].revision
        rewarmed = nats_traffic(nats_server, bus, lambda: [a.rewarm(revision, []) for a in agents])

        cold = nats_traffic(
            nats_server, bus, lambda: _restarted(bus, agents[: options.baseline_nodes])
        )
        baseline_nodes = nodes[: options.baseline_nodes]
        _seed_today(bus, baseline_nodes, images)
        today = nats_traffic(nats_server, bus, lambda: _today_round(bus, baseline_nodes, images))
    assert len(sent) == len(nodes), "every node gets exactly one re-warm"
    assert not runtime.pulls, f"a warm node pulled {runtime.pulls[:3]}: the bench measured pulls"
    client.flushdb()

    sample = nodes[: options.sample_nodes]
    naive_sample = _naive(app, client, sample, images)
    naive = naive_sample.scaled(len(nodes) / len(sample))
    _report(options, product, naive_sample, naive)
    scale = len(nodes) / len(baseline_nodes)
    total = _report_nats(options, fanned, rewarmed, cold, today, scale)
    return 0 if _meets_targets(product) and total <= TARGETS["nats_mb"] else 1


def _seed(bus: NatsBus, nodes: list[str], images: list[str]) -> float:
    """The catalog as the watcher writes it when every node is of one class."""
    started = time.perf_counter()
    catalog = CatalogStore(bus)
    digest, _ = catalog.put_class_slice(ClassSlice(tuple(map(SliceImage, images))).to_json())
    for node in nodes:
        catalog.put_pointer(SlicePointer(node, digest, len(images)))
    return time.perf_counter() - started


def _agents(
    bus: NatsBus, nodes: list[str], images: list[str]
) -> tuple[list[NodeAgent], FakeRuntime]:
    """One node agent per node, as each node's worker holds one. They share one catalog and
    one status store, which only saves this process memory: each node still reads its own
    pointer and keeps its own record, and a worker holds its class slice after its first
    re-warm whether or not it shares the store."""
    settings: Settings = load_settings()
    runtime = FakeRuntime()  # in memory, holding every image: a warm node's ListImages
    for image in images:
        runtime.registry.push(image)
        runtime.pull(image, timeout=60)
    runtime.pulls.clear()
    catalog, status = CatalogStore(bus), StatusStore(bus)
    agents = []
    for node in nodes:
        agent = NodeAgent(settings, node, runtime, bus)
        agent.catalog, agent.status = catalog, status
        agents.append(agent)
    return agents, runtime


def _restarted(bus: NatsBus, agents: list[NodeAgent]) -> None:
    """A re-warm right after each worker started: it holds no slice and no status record yet,
    so it reads both once (a node whose class slice changed reads the new one the same way)."""
    for agent in agents:
        agent.catalog, agent.status = CatalogStore(bus), StatusStore(bus)
        agent.rewarm(0, [])


def _seed_today(bus: NatsBus, nodes: list[str], images: list[str]) -> None:
    """Today's design: a slice copy per node, and a status record naming every image."""
    node_slice = ClassSlice(tuple(map(SliceImage, images))).to_json()
    for node in nodes:
        bus.kv_put(
            BASELINE_BUCKET, f"nodes.{node}", node_slice[:-1] + f',"node":"{node}"}}'.encode()
        )
        bus.kv_put(BASELINE_BUCKET, f"status.{node}", _today_status(node, images, 0))


def _today_round(bus: NatsBus, nodes: list[str], images: list[str]) -> None:
    """Each node's no-op re-warm in today's design: its slice read whole, its status record
    read and written back whole (expected list, a ``present`` entry per image), its report."""
    for node in nodes:
        found = bus.kv_get(BASELINE_BUCKET, f"nodes.{node}")
        assert found is not None, f"{node}: baseline slice not seeded"
        expected = [item["image"] for item in json.loads(found[0])["images"]]
        old = bus.kv_get(BASELINE_BUCKET, f"status.{node}")
        assert old is not None and json.loads(old[0])["expected"] == sorted(expected)
        bus.kv_put(BASELINE_BUCKET, f"status.{node}", _today_status(node, expected, found[1]))
        report = {"node": node, "revision": found[1], "present": len(expected), "pulled": 0}
        bus.publish(rewarm_events_subject(node), json.dumps(report).encode())


def _today_status(node: str, images: list[str], revision: int) -> bytes:
    now = time.time()
    entry = {"at": now, "outcome": "present", "reason": "", "seconds": 0.0}
    record = {
        "node": node,
        "images": {image: entry for image in images},
        "expected": sorted(images),
        "last_rewarm_at": now,
        "last_rewarm_revision": revision,
    }
    return json.dumps(record, sort_keys=True).encode()


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


def _report_nats(
    options: argparse.Namespace,
    fanned: Traffic,
    rewarmed: Traffic,
    cold: Traffic,
    today: Traffic,
    scale: float,
) -> float:
    """Print the NATS table; returns the product's total in MB."""
    sample, nodes = options.baseline_nodes, options.nodes
    rows = [
        ("beat fan-out: revision + node list (both designs)", fanned),
        (f"product: {nodes} warm nodes re-warm (measured)", rewarmed),
        (f"today: {sample} warm nodes re-warm (measured)", today),
        (f"today: {nodes} warm nodes re-warm (x{scale:g})", today.scaled(scale)),
        (f"product, workers just started: {sample} nodes (measured)", cold),
        (f"product, workers just started: {nodes} nodes (x{scale:g})", cold.scaled(scale)),
    ]
    print(
        f"\nNATS bytes of one periodic re-warm, {nodes} nodes x {options.images} images "
        "(nats-server /varz in_bytes and out_bytes, after minus before)"
    )
    print(f"{'what':<56} {'MB in':>9} {'MB out':>9} {'MB':>9} {'seconds':>8}")
    for label, traffic in rows:
        print(
            f"{label:<56} {traffic.bytes_in / 2**20:>9.2f} {traffic.bytes_out / 2**20:>9.2f} "
            f"{traffic.mb:>9.2f} {traffic.seconds:>8.2f}"
        )
    per_node = (rewarmed.bytes_in + rewarmed.bytes_out) / nodes
    today_per_node = (today.bytes_in + today.bytes_out) / sample
    cold_per_node = (cold.bytes_in + cold.bytes_out) / sample
    print(
        f"per node: product {per_node:,.0f} B (reads its pointer and its small status record, "
        f"publishes its report, writes nothing); today {today_per_node:,.0f} B (reads its "
        f"slice copy, reads and writes its whole status); a worker just started "
        f"{cold_per_node:,.0f} B (reads its class slice once)"
    )
    print(
        f"today and just-started rows: measured on {sample} nodes, times {scale:g} "
        "(each node's traffic is its own)"
    )
    product, baseline = fanned.mb + rewarmed.mb, fanned.mb + today.scaled(scale).mb
    verdict = "meets" if product <= TARGETS["nats_mb"] else "MISSES"
    print(
        f"periodic re-warm of a warm fleet, in all: product {product:,.2f} MB, today "
        f"{baseline:,.1f} MB ({baseline / max(product, 1e-9):,.0f}x); product {verdict} the "
        f"target (<= {TARGETS['nats_mb']:.0f} MB)"
    )
    return product


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sample-nodes", type=int, default=50)
    parser.add_argument("--baseline-nodes", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
