"""A fleet of hundreds of nodes against one registry: what it costs the registry, today and now.

    python bench/bench_fleet.py [--nodes 200] [--images 10] [--rounds 15] [--size-mib 1]
                                [--bandwidth-mib 100] [--blob-delay 0.2] [--small-limit 20]

Why (issue 15): at thousands of nodes the registry, not the node, is the bottleneck and the
victim. Before the issue every node decided alone: a ``:latest`` tag cost one manifest request
per node per re-warm, and a new image was pulled by every node at once. The product now has the
leading watcher resolve each tag once (watcher/digests.py) and caps the pulls from one registry
across the cluster (worker/permits.py, ``WARM_REGISTRY_PULL_LIMIT``, default 100).

Setup, all real and on loopback: the registry (docker-registry) behind localcluster's
CountingProxy, which holds each blob download ``--blob-delay`` s before its first byte and
shares ``--bandwidth-mib`` MiB/s of egress between all downloads, as a distant registry does; a
private NATS (catalog, status, permits). ``--nodes`` nodes, each the worker's own NodeAgent (the
re-warm diff, the Puller, its node slots and the registry permits) over its own
localcluster.httpnode runtime, which pulls from the registry over HTTP as containerd does (the
manifest, then each blob its node lacks) and sends ``User-Agent: warm-fleet-node/<node>``. The
nodes run in this one process, as in bench_fanout: 2 cores can run neither hundreds of worker
processes nor hundreds of containerds. The leader's digests come from the watcher's own
DigestResolver, through the proxy; the catalog is written as the watcher writes it (one class
slice, a pointer per node); a re-warm is every node's ``NodeAgent.rewarm`` at once, as beat's
fan-out reaches every node's queue at once.

Baseline, "today" (the behaviour before issue 15), in the same run: the slice carries no digest
-- what the watcher wrote before, and what a node sees while a digest is unknown -- so each node
asks the registry itself for its ``:latest`` tags (WARM_REFRESH_TAGS=latest, the default) and
pulls by tag; and WARM_REGISTRY_PULL_LIMIT=0 (no cap). Resolving digests has no setting to turn
it off, so the baseline leaves the digests out of the catalog; the cap is turned off by its
setting. Every other setting is the product's default on both sides.

Figures, all counted at the proxy (the registry's door), never by the nodes:

1. manifest requests of one periodic re-warm of a warm fleet (every image a ``:latest`` tag),
   by method and by who asked (the watcher's User-Agent or the nodes');
2. peak blob downloads in flight while the whole fleet pulls a new image, against the cap;
3. what one permanently broken image (its layer deleted from the registry) costs: how many
   nodes asked the registry for it, on its first re-warm and on the next;
4. the time until every node holds a new ``--size-mib`` MiB image, over ``--rounds`` rounds
   alternating the sides (checked on every node's runtime afterwards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import Registry, push_image
from localcluster.httpnode import AGENT, HttpNodeRuntime
from localcluster.proxy import CountingProxy
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import ClassSlice, SliceImage, SlicePointer
from tasks.settings import NatsSettings, load_settings
from watcher.digests import USER_AGENT, DigestResolver
from worker.agent import NodeAgent, RewarmReport

MIB = 2**20
DEFAULT_LIMIT = load_settings({}).runtime.registry_pull_limit


@dataclass
class Side:
    """One way of running the fleet: its settings, and whether the catalog carries digests."""

    name: str
    digests: bool
    env: dict[str, str]
    limit: int  # the cap its settings give the registry; 0: none
    agents: list[NodeAgent] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    blobs: list[int] = field(default_factory=list)
    manifests: list[int] = field(default_factory=list)


class Fleet:
    """The registry, its proxy, the catalog and every node's runtime."""

    def __init__(self, registry: Registry, proxy: CountingProxy, bus: NatsBus, nodes: int):
        self.registry = registry
        self.proxy = proxy
        self.bus = bus
        self.catalog = CatalogStore(bus)
        self.nodes = [f"node-{n:04d}" for n in range(nodes)]
        self.runtimes = [HttpNodeRuntime(node) for node in self.nodes]
        self.resolver = DigestResolver(lambda image, secrets: [], interval=3600)

    def agents(self, env: dict[str, str]) -> list[NodeAgent]:
        settings = load_settings(env)
        return [
            NodeAgent(settings, node, runtime, self.bus)
            for node, runtime in zip(self.nodes, self.runtimes, strict=True)
        ]

    def push(self, repository: str, tag: str, size_mib: float) -> str:
        """A new image, by the name nodes pull it under (through the proxy)."""
        pushed = push_image(self.registry.host, repository, tag, size_mib=size_mib)
        return pushed.ref.replace(self.registry.host, self.proxy.host, 1)

    def publish(self, images: list[str], *, digests: bool) -> None:
        """The catalog as the watcher writes it; with ``digests``, as the leader resolved them
        just now (one HEAD per image, through the proxy)."""
        if digests:
            self.resolver.resolve({image: () for image in images})
        entries = tuple(
            SliceImage(image, digest=self.resolver.digest(image) if digests else None)
            for image in images
        )
        digest, _ = self.catalog.put_class_slice(ClassSlice(entries).to_json())
        for node in self.nodes:
            self.catalog.put_pointer(SlicePointer(node, digest, len(images)))

    def holders(self, image: str) -> int:
        return sum(runtime.image_status(image) is not None for runtime in self.runtimes)

    def forget(self, image: str) -> None:
        for runtime in self.runtimes:
            runtime.remove(image)

    def askers(self, repository: str) -> int:
        """How many nodes asked the registry for anything of ``repository``."""
        return len(
            {
                r.agent
                for r in self.proxy.requests
                if r.repository == repository and AGENT in r.agent
            }
        )


def rewarm_all(agents: list[NodeAgent]) -> tuple[float, list[RewarmReport]]:
    """Every node's periodic re-warm at once; seconds until the last one is done."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(agents), thread_name_prefix="node") as pool:
        reports = list(pool.map(lambda agent: agent.rewarm(0, []), agents))
    return time.monotonic() - started, reports


def repository_of(reference: str) -> str:
    return reference.split("/", 1)[1].rsplit(":", 1)[0]


# --- 1. one periodic re-warm of a warm fleet ---------------------------------------------------


def periodic(fleet: Fleet, today: Side, product: Side, images: int, rounds: int) -> bool:
    refs = [fleet.push(f"fleet/svc-{i:03d}", "latest", 0.05) for i in range(images)]
    paced = fleet.proxy.blob_delay, fleet.proxy.bandwidth
    fleet.proxy.blob_delay, fleet.proxy.bandwidth = 0.0, None  # the warm-up is not measured
    fleet.publish(refs, digests=False)
    rewarm_all(today.agents)
    fleet.proxy.blob_delay, fleet.proxy.bandwidth = paced
    assert all(fleet.holders(ref) == len(fleet.nodes) for ref in refs), "fleet not warm"

    print(
        f"\n1. Manifest requests of one periodic re-warm, {len(fleet.nodes)} warm nodes x "
        f"{images} images (all :latest), counted at the proxy; {rounds} rounds per side"
    )
    print(f"{'side':<44} {'HEAD':>6} {'GET':>6} {'watcher':>8} {'nodes':>6} {'blobs':>6} {'s':>6}")
    product_counts = []
    for round_ in range(rounds):
        for side in (today, product) if round_ % 2 == 0 else (product, today):
            fleet.proxy.reset()
            started = time.monotonic()
            fleet.publish(refs, digests=side.digests)
            rewarm_all(side.agents)
            seconds = time.monotonic() - started
            counted = fleet.proxy.manifest_requests
            if side is product:
                product_counts.append(counted())
            print(
                f"{side.name:<44} {counted('HEAD'):>6} {counted('GET'):>6} "
                f"{counted(agent=USER_AGENT):>8} {counted(agent=AGENT):>6} "
                f"{fleet.proxy.blob_downloads:>6} {seconds:>6.1f}"
            )
    met = all(count == images for count in product_counts)
    print(
        f"target: manifest requests per re-warm = images ({images}), not images x nodes "
        f"({images * len(fleet.nodes):,}) -> {'MET' if met else 'MISSED'}"
    )
    return met


# --- 3. a permanently broken image --------------------------------------------------------------


def broken(fleet: Fleet, sides: list[Side]) -> None:
    print(
        "\n3. A permanently broken image (its layer deleted from the registry): nodes that asked "
        "the registry for it (User-Agent at the proxy), and manifest requests"
    )
    print(f"{'side':<44} {'first re-warm':>14} {'next re-warm':>13} {'manifests':>10}")
    for side in sides:
        ref = fleet.push(f"fleet/broken-{uuid.uuid4().hex[:6]}", "v1", 0.05)
        delete_layer(fleet.registry, ref)
        fleet.proxy.reset()
        fleet.publish([ref], digests=side.digests)
        rewarm_all(side.agents)
        first = fleet.askers(repository_of(ref))
        manifests = fleet.proxy.manifest_requests(agent=AGENT)
        fleet.proxy.reset()
        rewarm_all(side.agents)  # the next periodic re-warm: a failure for good is remembered
        print(f"{side.name:<44} {first:>14} {fleet.askers(repository_of(ref)):>13} {manifests:>10}")
    print(
        "target: <= 2 pull attempts fleet-wide -> needs waves (WARM_CANARY_NODES), not on main "
        "yet: every node tries once on both sides"
    )


def delete_layer(registry: Registry, ref: str) -> None:
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        layer = json.load(response)["layers"][0]["digest"]
    delete = urllib.request.Request(
        f"{registry.url}/v2/{repository}/blobs/{layer}", method="DELETE"
    )
    urllib.request.urlopen(delete, timeout=10).close()


# --- 2 and 4. a new image to the whole fleet ---------------------------------------------------


def rollout(fleet: Fleet, sides: list[Side], rounds: int, size_mib: float) -> None:
    for round_ in range(rounds):
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            ref = fleet.push("fleet/rollout", f"r{round_}-{side.limit}-{side.digests:d}", size_mib)
            fleet.proxy.reset()
            fleet.publish([ref], digests=side.digests)
            seconds, _ = rewarm_all(side.agents)
            held = fleet.holders(ref)
            assert held == len(fleet.nodes), f"{side.name}: {held} of {len(fleet.nodes)} hold it"
            side.seconds.append(seconds)
            side.peaks.append(fleet.proxy.peak_blob_downloads)
            side.blobs.append(fleet.proxy.blob_downloads)
            side.manifests.append(fleet.proxy.manifest_requests())
            fleet.forget(ref)


def spread(values: Sequence[float], digits: int = 1) -> str:
    ordered = sorted(values)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[-1] if len(ordered) > 1 else 0
    return (
        f"{statistics.median(ordered):>8.{digits}f} {p90:>8.{digits}f} "
        f"{ordered[0]:>8.{digits}f}..{ordered[-1]:<8.{digits}f}"
    )


def report_rollout(sides: list[Side], args: argparse.Namespace, nodes: int) -> bool:
    print(
        f"\n2 and 4. A new {args.size_mib:g} MiB image to all {nodes} nodes at once, "
        f"{args.rounds} rounds alternating the sides; registry behind the proxy: "
        f"{args.blob_delay:g} s before each blob's first byte, {args.bandwidth_mib:g} MiB/s "
        "of egress shared by all downloads"
    )
    print(f"{'side':<44} {'':>10} {'median':>8} {'p90':>8} {'min..max':>18}")
    for side in sides:
        print(f"{side.name:<44} {'seconds':>10} {spread(side.seconds)}")
        print(f"{'':<44} {'peak blobs':>10} {spread(side.peaks, 0)}")
        print(f"{'':<44} {'blobs':>10} {spread(side.blobs, 0)}")
        print(f"{'':<44} {'manifests':>10} {spread(side.manifests, 0)}")
    met = True
    for side in sides:
        if side.limit:
            within = max(side.peaks) <= side.limit
            met = met and within
            print(
                f"target: peak blob downloads <= K = {side.limit} ({side.name}): highest "
                f"{max(side.peaks)} -> {'MET' if within else 'MISSED'}"
            )
    today = statistics.median(sides[0].seconds)
    for side in sides[1:]:
        ratio = statistics.median(side.seconds) / max(today, 1e-9)
        print(f"median time, {side.name} / {sides[0].name}: {ratio:.2f}x")
    return met


def run(args: argparse.Namespace, workdir: Path) -> int:
    with (
        Registry(workdir / "registry") as registry,
        NatsServer(workdir / "nats") as nats,
        CountingProxy(
            registry.host, blob_delay=args.blob_delay, bandwidth=args.bandwidth_mib * MIB
        ) as proxy,
        NatsBus(NatsSettings(url=nats.url, connect_timeout=30)) as bus,
    ):
        base = {"WARM_NATS_URL": nats.url, "WARM_PULL_SECRETS": "false"}
        today = Side("today: tags per node, no cap (LIMIT=0)", False, base, 0)
        today.env = {**base, "WARM_REGISTRY_PULL_LIMIT": "0"}
        product = Side(f"product, defaults (K={DEFAULT_LIMIT})", True, base, DEFAULT_LIMIT)
        small = Side(
            f"product, WARM_REGISTRY_PULL_LIMIT={args.small_limit}",
            True,
            {**base, "WARM_REGISTRY_PULL_LIMIT": str(args.small_limit)},
            args.small_limit,
        )
        fleet = Fleet(registry, proxy, bus, args.nodes)
        sides = [today, product, small]
        for side in sides:
            side.agents = fleet.agents(side.env)
        print(
            f"Fleet benchmark: {args.nodes} simulated nodes (the worker's NodeAgent over an HTTP "
            "runtime each, one process), the real registry behind a counting proxy, private NATS"
        )
        met = periodic(fleet, today, product, args.images, rounds=2)
        broken(fleet, [today, product])
        rollout(fleet, sides, args.rounds, args.size_mib)
        met = report_rollout(sides, args, args.nodes) and met
        print("with waves (WARM_CANARY_NODES, default 2): not on main yet, not measured")
        for runtime in fleet.runtimes:
            runtime.close()
    return 0 if met else 1


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size-mib", type=float, default=1.0)
    parser.add_argument("--bandwidth-mib", type=float, default=100.0)
    parser.add_argument("--blob-delay", type=float, default=0.2)
    parser.add_argument("--small-limit", type=int, default=20)
    return parser.parse_args()


def main() -> int:
    args = options()
    with scratch_dir("bench-fleet-") as workdir:
        return run(args, workdir)


if __name__ == "__main__":
    raise SystemExit(main())
