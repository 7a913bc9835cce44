"""The whole flow on two simulated nodes: a new Deployment becomes a warm image on both.

Presence is read from each node's containerd through CRI ListImages, never from the product's
own status, so the test fails if the worker does not really pull.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from kubernetes import client

from localcluster import Registry, push_image
from localcluster.manifests import deployment
from tasks.bus import NatsBus

from .conftest import SimCluster, wait_for

WARM_TIMEOUT = 60.0


def on_all_nodes(cluster: SimCluster, ref: str) -> Callable[[], bool]:
    return lambda: all(ref in probe.tags() for probe in cluster.probes.values())


def raw_pull_seconds(cluster: SimCluster, registry: Registry) -> float:
    """The baseline: one CRI PullImage of an image of the same size, no product involved."""
    other = push_image(registry.host, f"e2e/raw-{uuid.uuid4().hex[:6]}", "v1", size_mib=20)
    probe = cluster.probes[sorted(cluster.nodes)[0]]
    started = time.monotonic()
    probe.pull(other.ref)
    return time.monotonic() - started


def test_deployment_becomes_warm_on_every_node_and_rewarm_restores_it(
    sim_cluster: SimCluster, registry: Registry, bus: NatsBus
) -> None:
    events: list[dict[str, object]] = []
    bus.subscribe("warm.events.pull.>", lambda _s, data: events.append(json.loads(data)))
    name = f"web-{uuid.uuid4().hex[:6]}"
    image = push_image(registry.host, f"e2e/{name}", "v1", size_mib=20)
    assert not any(image.ref in probe.tags() for probe in sim_cluster.probes.values())

    created = time.monotonic()
    apps = client.AppsV1Api(sim_cluster.api)
    apps.create_namespaced_deployment("default", deployment(name, image.ref, replicas=0))
    wait_for(on_all_nodes(sim_cluster, image.ref), WARM_TIMEOUT, "image on both nodes", sim_cluster)
    warm_seconds = time.monotonic() - created
    print(f"\nDeployment created -> 20 MiB image on both nodes: {warm_seconds:.3f}s")
    raw_seconds = raw_pull_seconds(sim_cluster, registry)
    print(f"raw CRI pull of another 20 MiB image, same containerd: {raw_seconds:.3f}s")

    pulled = {e["node"] for e in events if e["image"] == image.ref and e["outcome"] == "pulled"}
    assert pulled == set(sim_cluster.nodes)

    node_b = sorted(sim_cluster.nodes)[1]
    sim_cluster.probes[node_b].remove(image.ref)
    assert image.ref not in sim_cluster.probes[node_b].tags()
    rewarm = sim_cluster.cli("rewarm", "--node", node_b)
    assert rewarm.returncode == 0, rewarm.stderr + sim_cluster.logs()
    wait_for(
        lambda: image.ref in sim_cluster.probes[node_b].tags(),
        WARM_TIMEOUT,
        "image back on the node after a re-warm",
        sim_cluster,
    )
