"""Waves on 4 nodes with real containerd, on the product's defaults (2 canaries): a good new
image reaches its canaries first and then the rest; a broken one (its layer gone from the
registry) costs the registry one pull per canary and none from the other nodes, through
periodic re-warms and a held node's reconcile on start too, is shown stopped by
``warm-status``, and leaves a Warning Event on its Deployment; a fixed digest pushed to the
same tag starts a new wave that reaches every node.

What a node holds is read from its containerd through CRI; what the registry served, from the
registry's own access log (each containerd pull attempt fetches the image's manifest once,
then asks for the missing layer twice); the Event through the API double. The canaries are
named by the watcher's log.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localcluster import Registry, push_image
from localcluster.harness import registry_requests
from localcluster.images import PushedImage
from localcluster.manifests import deployment
from localcluster.product import ProductProcess
from localcluster.services import RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import Wave, WaveState
from tasks.settings import NatsSettings
from watcher.waves import STOPPED_REASON

from .conftest import SimCluster, run_rewarming_cluster, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 8.0  # WARM_REWARM_INTERVAL: periodic re-warms while the broken image is held
WARM_TIMEOUT = 60.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def cluster(workdir: Path, redis_server: RedisServer, registry: Registry) -> Iterator[SimCluster]:
    with run_rewarming_cluster(workdir, registry, f"{redis_server.url}/10", 4, INTERVAL) as running:
        yield running


def process(cluster: SimCluster, name: str) -> ProductProcess:
    return next(p for p in cluster.processes if p.name == name)


def canaries_logged(cluster: SimCluster, ref: str) -> list[str]:
    """The canaries the watcher logged for the wave of ``ref`` (the last one)."""
    log = process(cluster, "watcher").log_path.read_text(errors="replace")
    found = re.findall(rf"wave of {re.escape(ref)} \(.*?\): canaries \[(.*?)\]", log)
    return [name.strip(" '") for name in found[-1].split(",")] if found else []


def wave_of(cluster: SimCluster, ref: str) -> Wave | None:
    with NatsBus(NatsSettings(url=cluster.env["WARM_NATS_URL"])) as bus:
        return CatalogStore(bus).waves().get(ref)


def layer_of(registry: Registry, image: PushedImage) -> str:
    repository = image.ref.split("/", 1)[1].rsplit(":", 1)[0]
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["layers"][0]["digest"])


def lose_blob(registry: Registry, digest: str) -> None:
    """The registry loses a layer's content, as after a botched garbage collection: its
    manifest still resolves, a pull fails fetching the layer (404 blob unknown)."""
    hexa = digest.split(":", 1)[1]
    (registry.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data").unlink()


def repository_of(image: PushedImage) -> str:
    return image.ref.split("/", 1)[1].rsplit(":", 1)[0]


def layer_fetches(registry: Registry, image: PushedImage, layer: str) -> int:
    return len(registry_requests(registry, f"GET /v2/{repository_of(image)}/blobs/{layer} "))


def pull_attempts(registry: Registry, image: PushedImage) -> int:
    """containerd's pulls of ``image``: each fetches a manifest once (by digest or by tag)."""
    lines = registry_requests(registry, f"GET /v2/{repository_of(image)}/manifests/")
    return sum("containerd" in line for line in lines)


def test_a_good_new_image_reaches_its_canaries_first_then_every_node(
    cluster: SimCluster, registry: Registry
) -> None:
    name = f"wave-{uuid.uuid4().hex[:6]}"
    image = push_image(registry.host, f"e2e/{name}", "v1", size_mib=4)
    apps = client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment("default", deployment(name, image.ref, replicas=0))

    arrived: dict[str, float] = {}
    started = time.monotonic()

    def everywhere() -> bool:
        for node, probe in cluster.probes.items():
            if node not in arrived and image.ref in probe.tags():
                arrived[node] = time.monotonic() - started
        return len(arrived) == len(cluster.probes)

    wait_for(everywhere, WARM_TIMEOUT, "the image on every node", cluster)
    canaries = canaries_logged(cluster, image.ref)
    assert len(canaries) == 2, cluster.logs()
    first_canary = min(arrived[c] for c in canaries)
    others = {node: at for node, at in arrived.items() if node not in canaries}
    print(f"arrivals (s): canaries {[arrived[c] for c in canaries]}, others {others}")
    assert all(at > first_canary for at in others.values())
    assert wave_of(cluster, image.ref) is None  # released: nothing stored any more
    layer = layer_of(registry, image)
    assert layer_fetches(registry, image, layer) == len(cluster.nodes)  # each node once


def test_a_broken_image_stops_at_its_canaries_and_a_fixed_digest_reaches_every_node(
    cluster: SimCluster, registry: Registry
) -> None:
    name = f"broken-{uuid.uuid4().hex[:6]}"
    broken = push_image(registry.host, f"e2e/{name}", "v1", size_mib=2)
    layer = layer_of(registry, broken)
    lose_blob(registry, layer)
    apps = client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment("default", deployment(name, broken.ref, replicas=0))

    wait_for(
        lambda: (w := wave_of(cluster, broken.ref)) is not None and w.state is WaveState.STOPPED,
        WARM_TIMEOUT,
        "the wave stopped",
        cluster,
    )
    stopped = wave_of(cluster, broken.ref)
    assert stopped is not None and stopped.node in stopped.canaries
    time.sleep(2 * INTERVAL + 2)  # two periodic re-warms of every node while it is held
    # A held node's worker restarts: its reconcile on start diffs the slice, which holds it.
    (other, *_) = sorted(set(cluster.nodes) - set(stopped.canaries))
    worker = process(cluster, f"worker-{other}")
    worker.stop()
    worker.start()
    wait_for(
        lambda: f"reconcile on start of node {other}" in worker.log_path.read_text(),
        WARM_TIMEOUT,
        "the restarted worker's reconcile",
        cluster,
    )
    attempts, fetches = pull_attempts(registry, broken), layer_fetches(registry, broken, layer)
    print(
        f"broken image, 4 nodes, 2 re-warms and a restart: {attempts} pulls, "
        f"{fetches} layer requests"
    )
    seen = "\n".join(registry_requests(registry, f"/v2/{repository_of(broken)}/"))
    assert 1 <= attempts <= 2, seen + cluster.logs()  # one per canary, none from the others
    assert fetches <= 2 * attempts, seen  # containerd asks twice for a missing layer

    shown = cluster.cli("warm-status", "--json")
    assert shown.returncode == 1, shown.stderr
    statuses = {status["node"]: status for status in json.loads(shown.stdout)["nodes"]}
    held = sorted(node for node, status in statuses.items() if broken.ref in status["held"])
    assert held == sorted(set(cluster.nodes) - set(stopped.canaries))
    assert statuses[held[0]]["held"][broken.ref].startswith(f"wave stopped: canary {stopped.node}")
    assert broken.ref in statuses[stopped.node]["failed"]
    table = cluster.cli("warm-status")
    assert f"held     {broken.ref} on 2 node(s)" in table.stdout

    uid = apps.read_namespaced_deployment(name, "default").metadata.uid
    events = client.CoreV1Api(cluster.api).list_namespaced_event("default").items
    (event,) = [e for e in events if e.reason == STOPPED_REASON and e.involved_object.name == name]
    assert event.involved_object.kind == "Deployment" and event.involved_object.uid == uid
    assert event.type == "Warning" and stopped.node in event.message

    fixed = push_image(registry.host, f"e2e/{name}", "v1", size_mib=2)  # same tag, sound
    took = wait_for(
        lambda: all(fixed.digest_ref in p.digests_of(broken.ref) for p in cluster.probes.values()),
        INTERVAL + WARM_TIMEOUT,  # the next resolution round, the canaries, then the rest
        "the fixed digest on every node",
        cluster,
    )
    print(f"fixed digest on every node {took:.1f}s after its push")
    assert wave_of(cluster, broken.ref) is None
    assert cluster.cli("warm-status").returncode == 0
