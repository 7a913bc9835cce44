"""A fleet of hundreds of nodes against one registry: what it costs the registry, today and now.

    python bench/bench_fleet.py [--nodes 200] [--images 10] [--rounds 15] [--size-mib 1]
                                [--bandwidth-mib 100] [--blob-delay 0.2] [--small-limit 20]
                                [--sides today,cap,small-cap,waves,defaults]

Why (issue 15): at thousands of nodes the registry, not the node, is the bottleneck and the
victim. Before the issue every node decided alone: a ``:latest`` tag cost one manifest request
per node per re-warm, and a new image was pulled by every node at once. The product now has the
leading watcher resolve each tag once (watcher/digests.py), caps the pulls from one registry
across the cluster (worker/permits.py, ``WARM_REGISTRY_PULL_LIMIT``, default 100), and sends a
new image to a few canary nodes before the rest (watcher/waves.py, ``WARM_CANARY_NODES``,
default 2). Sides: today's, the cap alone (at its default and at ``--small-limit``: 200 nodes
on 2 cores never have 100 downloads in flight), waves alone, and both (every default);
``--sides`` runs some of them (today's, the baseline, always), e.g. to re-measure one.

Setup, all real and on loopback: the registry (docker-registry) behind localcluster's
CountingProxy, which holds each blob download ``--blob-delay`` s before its first byte and
shares ``--bandwidth-mib`` MiB/s of egress between all downloads, as a distant registry does; a
private NATS (catalog, status, permits) and Redis (the broker); ``python -m watcher`` on the
Kubernetes API double, which holds ``--nodes`` Nodes. Each node is the worker's own NodeAgent
(the re-warm diff, the Puller, its node slots and the registry permits) over its own
localcluster.httpnode runtime, which pulls from the registry over HTTP as containerd does (the
manifest, then each blob its node lacks) and sends ``User-Agent: warm-fleet-node/<node>``. The
nodes run in this one process: 2 cores can run neither hundreds of worker processes nor
hundreds of containerds. So the Celery consumer is the one part replaced: the watcher's and
beat's task messages are taken off each node's queue in Redis and handed to that node's agent
as the worker's task bodies hand them (a pull task to ``NodeAgent.pull``, a re-warm to
``NodeAgent.rewarm``).

1 is measured without the watcher, whose digest rounds come once per re-warm interval: the
leader's digests come from the watcher's own DigestResolver, the catalog is written as the
watcher writes it (one class slice, a pointer per node), and a re-warm is every node's
``NodeAgent.rewarm`` at once, as beat's fan-out reaches every node's queue at once. 2 to 4 go
through the watcher: a new Deployment names the image, the watcher resolves its digest and
sends the nodes their pull tasks; "the next re-warm" is beat's fan-out (tasks.rewarm).

Baseline, "today" (the behaviour before issue 15), in the same run: the slice carries no digest
-- what the watcher wrote before, and what a node sees while a digest is unknown -- so each node
asks the registry itself for its ``:latest`` tags (WARM_REFRESH_TAGS=latest, the default) and
pulls by tag; WARM_REGISTRY_PULL_LIMIT=0 (no cap); WARM_CANARY_NODES=0 (no waves). Resolving
digests has no setting to turn it off: in 1 the baseline leaves the digests out of the catalog,
in 2 to 4 the watcher resolves them on every side. Every other setting is the product's
default on every side.

Figures, all counted at the proxy (the registry's door), never by the nodes:

1. manifest requests of one periodic re-warm of a warm fleet (every image a ``:latest`` tag),
   by method and by who asked (the watcher's User-Agent or the nodes');
2. peak blob downloads in flight while the whole fleet pulls a new image, against the cap;
3. what one permanently broken image (its layer deleted from the registry) costs: how many
   nodes asked the registry for it after its Deployment appeared, and on the next re-warm;
4. the time from a new Deployment until every node's runtime holds its new ``--size-mib`` MiB
   image, over ``--rounds`` rounds alternating the sides.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import logging
import os
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import FakeKubeAPI, Registry, product, push_image
from localcluster.harness import wait_for
from localcluster.httpnode import AGENT, HttpNodeRuntime
from localcluster.manifests import create_nodes, deployment
from localcluster.proxy import CountingProxy
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import ClassSlice, SliceImage, SlicePointer
from tasks.names import PULL_IMAGE, REWARM_NODE
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, load_settings
from watcher.digests import USER_AGENT, DigestResolver
from worker.agent import NodeAgent

log = logging.getLogger("bench_fleet")

MIB = 2**20
DEFAULT_LIMIT = load_settings({}).runtime.registry_pull_limit
DEFAULT_CANARIES = load_settings({}).watch.canary_nodes
SIDES = ("today", "cap", "small-cap", "waves", "defaults")  # make_sides's, in its order
TODAY_TAGS = "today: every node asks for its tags"


@dataclass
class Side:
    """One way of running the fleet: its settings, and whether the catalog carries digests."""

    name: str
    digests: bool
    env: dict[str, str]
    limit: int  # the cap its settings give the registry; 0: none
    watcher_env: dict[str, str] = field(default_factory=dict)  # the watcher's own settings
    agents: list[NodeAgent] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    blobs: list[int] = field(default_factory=list)
    manifests: list[int] = field(default_factory=list)

    @property
    def waves(self) -> bool:
        return self.watcher_env.get("WARM_CANARY_NODES") != "0"


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

    def held_everywhere(self, image: str) -> bool:
        return all(runtime.image_status(image) is not None for runtime in self.runtimes)

    def askers(self, repository: str) -> int:
        """How many nodes asked the registry for anything of ``repository``."""
        return len(
            {
                r.agent
                for r in self.proxy.requests
                if r.repository == repository and AGENT in r.agent
            }
        )


def rewarm_all(agents: list[NodeAgent]) -> None:
    """Every node's periodic re-warm at once, until the last one is done."""
    with ThreadPoolExecutor(len(agents), thread_name_prefix="node") as pool:
        list(pool.map(lambda agent: agent.rewarm(0, []), agents))


def repository_of(reference: str) -> str:
    return reference.split("/", 1)[1].rsplit(":", 1)[0]


# --- 1. one periodic re-warm of a warm fleet ---------------------------------------------------


def periodic(fleet: Fleet, today: Side, ours: Side, images: int, rounds: int) -> bool:
    refs = [fleet.push(f"fleet/svc-{i:03d}", "latest", 0.05) for i in range(images)]
    paced = fleet.proxy.blob_delay, fleet.proxy.bandwidth
    fleet.proxy.blob_delay, fleet.proxy.bandwidth = 0.0, None  # the warm-up is not measured
    fleet.publish(refs, digests=False)
    rewarm_all(today.agents)
    fleet.proxy.blob_delay, fleet.proxy.bandwidth = paced
    assert all(map(fleet.held_everywhere, refs)), "fleet not warm"

    print(
        f"\n1. Manifest requests of one periodic re-warm, {len(fleet.nodes)} warm nodes x "
        f"{images} images (all :latest), counted at the proxy; {rounds} rounds per side"
    )
    print(f"{'side':<44} {'HEAD':>6} {'GET':>6} {'watcher':>8} {'nodes':>6} {'blobs':>6} {'s':>6}")
    product_counts = []
    for round_ in range(rounds):
        for side in (today, ours) if round_ % 2 == 0 else (ours, today):
            fleet.proxy.reset()
            started = time.monotonic()
            fleet.publish(refs, digests=side.digests)
            rewarm_all(side.agents)
            seconds = time.monotonic() - started
            counted = fleet.proxy.manifest_requests
            if side is ours:
                product_counts.append(counted())
            label = "product: the leader resolves each tag" if side is ours else TODAY_TAGS
            print(
                f"{label:<44} {counted('HEAD'):>6} {counted('GET'):>6} "
                f"{counted(agent=USER_AGENT):>8} {counted(agent=AGENT):>6} "
                f"{fleet.proxy.blob_downloads:>6} {seconds:>6.1f}"
            )
    met = all(count == images for count in product_counts)
    print(
        f"target: manifest requests per re-warm = images ({images}), not images x nodes "
        f"({images * len(fleet.nodes):,}) -> {'MET' if met else 'MISSED'}"
    )
    return met


# --- the real watcher, its tasks fed to the fleet ---------------------------------------------


class TaskFeed:
    """The Celery messages the watcher and beat send to the nodes' queues (Redis), handed to
    each node's agent as the worker's task bodies hand them (worker/handlers.py): a pull task
    to ``NodeAgent.pull``, a re-warm to ``NodeAgent.rewarm``. It stands in for 200 Celery
    consumers, which 2 cores cannot run; transient failures are not retried (none occur)."""

    def __init__(self, redis_url: str, nodes: list[str]) -> None:
        self.agents: dict[str, NodeAgent] = {}
        self._client = redis.Redis.from_url(redis_url)
        self._queues = [queue_for_node(node) for node in nodes]
        self._pool = ThreadPoolExecutor(2 * len(nodes), thread_name_prefix="task")
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, name="feed", daemon=True)
        self._thread.start()

    def idle(self) -> bool:
        with self._lock:
            if self._busy:
                return False
        pipe = self._client.pipeline(transaction=False)
        for queue in self._queues:
            pipe.llen(queue)
        return not any(pipe.execute())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown()

    def _consume(self) -> None:
        while not self._stop.is_set():
            popped = self._client.brpop(self._queues, timeout=1)
            if popped is None:
                continue
            message = json.loads(popped[1])
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            with self._lock:
                self._busy += 1
            self._pool.submit(self._run, message["headers"]["task"], kwargs)

    def _run(self, task: str, kwargs: dict[str, Any]) -> None:
        try:
            agent = self.agents[kwargs["node"]]
            if task == PULL_IMAGE:
                agent.pull(kwargs["image"], digest=kwargs.get("digest"))
            elif task == REWARM_NODE:
                agent.rewarm(kwargs.get("revision", 0), kwargs.get("images") or [])
        except Exception:  # the agent reports what an image costs; anything else is a bug
            log.exception("%s for %s failed", task, kwargs.get("node"))
        finally:
            with self._lock:
                self._busy -= 1


class Cluster:
    """The Kubernetes API double with the fleet's Nodes, ``python -m watcher`` on it, a private
    Redis as the broker, and the feed of its tasks to the nodes."""

    def __init__(self, workdir: Path, fleet: Fleet, nats_url: str) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.kube = FakeKubeAPI(bookmark_interval=0.5).start()
        self.api = self.kube.api_client()
        create_nodes(self.api, fleet.nodes)
        self.redis = RedisServer(workdir / "redis").start()
        self.env = product.product_env(
            broker_url=f"{self.redis.url}/0",
            nats_url=nats_url,
            kubeconfig=self.kube.write_kubeconfig(workdir / "kubeconfig"),
        )
        self.feed = TaskFeed(f"{self.redis.url}/0", fleet.nodes)
        self.watcher: product.ProductProcess | None = None
        self._watcher_env: dict[str, str] | None = None
        self._deployed = 0

    def use(self, side: Side) -> None:
        """The side's node agents; its watcher, restarted if its settings differ."""
        self.feed.agents = {agent.node: agent for agent in side.agents}
        if side.watcher_env != self._watcher_env:
            if self.watcher is not None:
                self.watcher.stop()
            self.watcher = product.watcher({**self.env, **side.watcher_env}, self.workdir)
            self.watcher.start()
            self._watcher_env = side.watcher_env
            time.sleep(3)  # its first lists and the re-warm it sends every node at start
        self.settle()

    def settle(self, quiet: float = 2.0, timeout: float = 300.0) -> None:
        """Until no task has been queued or run for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        calm_since = time.monotonic()
        while time.monotonic() - calm_since < quiet:
            if not self.feed.idle():
                calm_since = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fleet never settled\n{self.logs()}")
            time.sleep(0.1)

    def deploy(self, image: str) -> str:
        """A Deployment using ``image`` (no replicas: the warmer reads the template)."""
        self._deployed += 1
        name = f"app-{self._deployed}"
        client.AppsV1Api(self.api).create_namespaced_deployment(
            "default", deployment(name, image, replicas=0)
        )
        return name

    def rewarm_all(self) -> None:
        """Beat's periodic re-warm: one task per node (tasks.rewarm, as beat sends it)."""
        os.environ["WARM_BROKER_URL"] = self.env["WARM_BROKER_URL"]  # read when the app loads
        from tasks.app import app
        from tasks.rewarm import dispatch_rewarm

        dispatch_rewarm(app, self.fleet.bus)
        self.settle()

    def undeploy(self, name: str) -> None:
        client.AppsV1Api(self.api).delete_namespaced_deployment(name, "default")

    def logs(self) -> str:
        return self.watcher.log_tail() if self.watcher is not None else ""

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.feed.close()
        self.redis.stop()
        self.kube.stop()


# --- 3. a permanently broken image --------------------------------------------------------------


def broken(cluster: Cluster, sides: list[Side]) -> bool:
    """Print what a broken image costs each side; whether waves held it to their canaries."""
    fleet = cluster.fleet
    met = True
    print(
        "\n3. A permanently broken image (its layer deleted from the registry) in a new "
        "Deployment: nodes that asked the registry for it (User-Agent at the proxy), and "
        "manifest requests; then the next periodic re-warm of every node (beat's fan-out)"
    )
    print(f"{'side':<44} {'first':>6} {'next re-warm':>13} {'manifests':>10}")
    for side in sides:
        ref = fleet.push(f"fleet/broken-{uuid.uuid4().hex[:6]}", "v1", 0.05)
        delete_layer(fleet.registry, ref)
        cluster.use(side)
        fleet.proxy.reset()
        name = cluster.deploy(ref)
        time.sleep(2)  # the watcher's turn: a wave's canaries are checked every second
        cluster.settle(quiet=5)
        first = fleet.askers(repository_of(ref))
        manifests = fleet.proxy.manifest_requests(agent=AGENT)
        fleet.proxy.reset()
        cluster.rewarm_all()
        print(f"{side.name:<44} {first:>6} {fleet.askers(repository_of(ref)):>13} {manifests:>10}")
        cluster.undeploy(name)
        if side.waves:
            met = met and first <= DEFAULT_CANARIES
    print(
        f"target: <= {DEFAULT_CANARIES} pull attempts fleet-wide (nodes that asked) with waves -> "
        f"{'MET' if met else 'MISSED'}"
    )
    return met


def delete_layer(registry: Registry, ref: str) -> None:
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        layer = json.load(response)["layers"][0]["digest"]
    url = f"{registry.url}/v2/{repository}/blobs/{layer}"
    delete = urllib.request.Request(url, method="DELETE")
    urllib.request.urlopen(delete, timeout=10).close()


# --- 2 and 4. a new image to the whole fleet ---------------------------------------------------


def rollout(cluster: Cluster, sides: list[Side], rounds: int, size_mib: float) -> None:
    fleet = cluster.fleet
    for round_ in range(rounds):
        for side in alternated(sides, round_):
            ref = fleet.push("fleet/rollout", f"r{round_}-{sides.index(side)}", size_mib)
            cluster.use(side)
            fleet.proxy.reset()
            started = time.monotonic()
            cluster.deploy(ref)
            everywhere = partial(fleet.held_everywhere, ref)
            wait_for(everywhere, 600, f"{side.name}: {ref} on every node", cluster.logs)
            side.seconds.append(time.monotonic() - started)
            cluster.settle()  # the rollout's last requests (tags attached) are counted too
            side.peaks.append(fleet.proxy.peak_blob_downloads)
            side.blobs.append(fleet.proxy.blob_downloads)
            side.manifests.append(fleet.proxy.manifest_requests())


def alternated(sides: list[Side], round_: int) -> list[Side]:
    """The sides in this round's order: each goes first in turn within its group of one
    watcher configuration, and the groups swap ends every round, so the watcher restarts once
    per round, not at every side."""
    groups = [list(g) for _, g in itertools.groupby(sides, key=lambda s: s.watcher_env)]
    if round_ % 2:
        groups.reverse()
    return [
        side
        for group in groups
        for side in group[round_ % len(group) :] + group[: round_ % len(group)]
    ]


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
        chosen = {"today", *args.sides.split(",")}
        sides = [
            side
            for key, side in zip(SIDES, make_sides(nats.url, args.small_limit), strict=True)
            if key in chosen
        ]
        fleet = Fleet(registry, proxy, bus, args.nodes)
        for side in sides:
            side.agents = fleet.agents(side.env)
        print(
            f"Fleet benchmark: {args.nodes} simulated nodes (the worker's NodeAgent over an HTTP "
            "runtime each, one process), the real registry behind a counting proxy, private "
            "NATS; python -m watcher on the Kubernetes API double, its tasks on a private Redis"
        )
        met = periodic(fleet, sides[0], sides[-1], args.images, rounds=2)
        cluster = Cluster(workdir, fleet, nats.url)
        try:
            met = broken(cluster, sides) and met
            rollout(cluster, sides, args.rounds, args.size_mib)
        finally:
            cluster.close()
        met = report_rollout(sides, args, args.nodes) and met
        for runtime in fleet.runtimes:
            runtime.close()
    return 0 if met else 1


def make_sides(nats_url: str, small_limit: int) -> list[Side]:
    """Today's behaviour first (the baseline), then the product's: the cap alone (at its
    default and at ``small_limit``), waves alone, and both (every setting at its default).
    Sides of one watcher configuration are listed together (see :func:`alternated`)."""
    nodes = {"WARM_NATS_URL": nats_url, "WARM_PULL_SECRETS": "false"}
    uncapped = {**nodes, "WARM_REGISTRY_PULL_LIMIT": "0"}
    small = {**nodes, "WARM_REGISTRY_PULL_LIMIT": str(small_limit)}
    off = {"WARM_CANARY_NODES": "0"}
    k, canaries = DEFAULT_LIMIT, DEFAULT_CANARIES
    return [
        Side("today: no cap, no waves", False, uncapped, 0, off),
        Side(f"cap K={k} (default), no waves", True, nodes, k, off),
        Side(f"cap K={small_limit}, no waves", True, small, small_limit, off),
        Side(f"waves ({canaries} canaries, default), no cap", True, uncapped, 0),
        Side(f"defaults: waves ({canaries}) and cap K={k}", True, nodes, k),
    ]


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size-mib", type=float, default=1.0)
    parser.add_argument("--bandwidth-mib", type=float, default=100.0)
    parser.add_argument("--blob-delay", type=float, default=0.2)
    parser.add_argument("--small-limit", type=int, default=20)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"of {', '.join(SIDES)}")
    args = parser.parse_args()
    if unknown := set(args.sides.split(",")) - set(SIDES):
        parser.error(f"--sides: no side {', '.join(sorted(unknown))}; one of {', '.join(SIDES)}")
    return args


def main() -> int:
    args = options()
    with scratch_dir("bench-fleet-") as workdir:
        return run(args, workdir)


if __name__ == "__main__":
    raise SystemExit(main())
