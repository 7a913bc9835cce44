"""Digests resolved once, centrally: a moved tag reaches every node by digest, and a steady
catalog costs the registry one manifest request per image per re-warm interval, not one per node.

Figures come from the registry's own access log (each line names its client: the watcher's
``warm-images-watcher`` or the nodes' ``containerd``) and from each node's containerd through
CRI, never from the product's reports.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localcluster import Registry, push_image
from localcluster.harness import registry_requests
from localcluster.manifests import deployment
from localcluster.services import RedisServer
from tasks.bus import NatsBus
from tasks.names import REWARM_EVENTS
from tasks.settings import NatsSettings
from watcher.digests import USER_AGENT

from .conftest import SimCluster, run_rewarming_cluster, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 12.0  # WARM_REWARM_INTERVAL: the watcher's resolution rounds and beat's re-warms
WARM_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster(workdir: Path, redis_server: RedisServer, registry: Registry) -> Iterator[SimCluster]:
    with run_rewarming_cluster(workdir, registry, f"{redis_server.url}/9", 3, INTERVAL) as running:
        yield running


def tag_requests(registry: Registry, ref: str, agent: str) -> int:
    """Requests for ``ref``'s manifest by its tag, from clients whose User-Agent has ``agent``."""
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    lines = registry_requests(registry, f"/v2/{repository}/manifests/{tag} ")
    return sum(agent in line for line in lines)


def catalog_digest(cluster: SimCluster, ref: str) -> str | None:
    listed = cluster.cli("catalog", "--json")
    entries = {e["image"]: e for e in json.loads(listed.stdout)} if listed.returncode == 0 else {}
    digest = entries.get(ref, {}).get("digest")
    return str(digest) if digest else None


def test_a_moved_tag_reaches_every_node_by_digest_with_one_lookup_per_round(
    cluster: SimCluster, registry: Registry
) -> None:
    name = f"dg-{uuid.uuid4().hex[:6]}"
    first = push_image(registry.host, f"e2e/{name}", "latest", size_mib=1)
    apps = client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment("default", deployment(name, first.ref, replicas=0))
    nodes = sorted(cluster.nodes)
    wait_for(
        lambda: (
            catalog_digest(cluster, first.ref) == first.digest
            and all(first.digest_ref in cluster.probes[n].digests_of(first.ref) for n in nodes)
        ),
        WARM_TIMEOUT,
        "the first digest in the catalog and on every node",
        cluster,
    )

    # Steady: two intervals of periodic re-warms, nothing moves.
    rewarms: list[str] = []
    with NatsBus(NatsSettings(url=cluster.env["WARM_NATS_URL"])) as bus:
        bus.subscribe(f"{REWARM_EVENTS}.>", lambda subject, data: rewarms.append(subject))
        watcher_before = tag_requests(registry, first.ref, USER_AGENT)
        nodes_before = tag_requests(registry, first.ref, "containerd")
        time.sleep(2 * INTERVAL + 1)
        watcher_steady = tag_requests(registry, first.ref, USER_AGENT) - watcher_before
        nodes_steady = tag_requests(registry, first.ref, "containerd") - nodes_before
    assert {subject.rsplit(".", 1)[1] for subject in rewarms} == set(nodes), (
        "every node re-warmed in the window" + cluster.logs()
    )
    print(
        f"steady, 2 intervals: {watcher_steady} tag lookups by the watcher, {nodes_steady} by nodes"
    )
    assert 1 <= watcher_steady <= 3  # one per round: 2 intervals hold 2 (±1 at the edges)
    assert nodes_steady == 0  # the nodes compared digests locally

    moved = push_image(registry.host, f"e2e/{name}", "latest", size_mib=1)
    nodes_before = tag_requests(registry, first.ref, "containerd")
    took = wait_for(
        lambda: all(moved.digest_ref in cluster.probes[n].digests_of(first.ref) for n in nodes),
        INTERVAL + 10,  # the next resolution round, then one pull task per node
        "the moved tag on every node",
        cluster,
    )
    assert catalog_digest(cluster, first.ref) == moved.digest
    print(f"moved tag on {len(nodes)} nodes in {took:.1f}s (interval {INTERVAL:g}s)")
    # One tag request per node to put the tag on the content pulled by digest; two where the
    # watcher's pull task and beat's re-warm (which lists once, then pulls) raced on a node.
    attach = tag_requests(registry, first.ref, "containerd") - nodes_before
    print(f"tag requests by nodes for the move: {attach}")
    assert len(nodes) <= attach <= 2 * len(nodes)
