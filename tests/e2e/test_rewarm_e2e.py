"""Re-warm, status and Flower through the real CLI, on Redis and on RabbitMQ.

Every check of what a node holds reads its containerd through CRI (CriProbe), never the
product's own status, so the status is checked against the runtime and not against itself.
The tests of a module share one cluster and run in order: a healthy catalog first, then one
with an image the registry does not have.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from kubernetes import client

from localcluster import Registry, free_port, push_image
from localcluster.manifests import deployment
from localcluster.product import celery
from tasks.names import REWARM_NODE

from .conftest import SimCluster, wait_for

pytestmark = pytest.mark.e2e

WARM_TIMEOUT = 60.0
FLOWER_AUTH = ("warm", "s3cret")


def in_catalog(cluster: SimCluster, ref: str) -> Callable[[], bool]:
    def check() -> bool:
        listed = cluster.cli("catalog", "--json")
        return listed.returncode == 0 and ref in {e["image"] for e in json.loads(listed.stdout)}

    return check


@pytest.fixture(scope="module")
def warm_image(broker_cluster: SimCluster, registry: Registry) -> str:
    """A Deployment's image, warm on every node."""
    name = f"app-{uuid.uuid4().hex[:6]}"
    image = push_image(registry.host, f"e2e/{name}", "v1", size_mib=4)
    apps = client.AppsV1Api(broker_cluster.api)
    apps.create_namespaced_deployment("default", deployment(name, image.ref, replicas=0))
    probes = broker_cluster.probes.values()
    wait_for(
        lambda: all(image.ref in p.tags() for p in probes), WARM_TIMEOUT, "warm", broker_cluster
    )
    return image.ref


def test_rewarm_wait_restores_a_removed_image_and_exits_zero(
    broker_cluster: SimCluster, warm_image: str
) -> None:
    node = sorted(broker_cluster.nodes)[0]
    broker_cluster.probes[node].remove(warm_image)

    done = broker_cluster.cli("rewarm", "--wait", "--timeout", "60")

    assert done.returncode == 0, done.stdout + done.stderr + broker_cluster.logs()
    assert warm_image in broker_cluster.probes[node].tags()
    assert f"{node}: ok  1 pulled" in done.stdout
    assert "all 2 node(s) re-warmed" in done.stdout


def test_catalog_lists_the_image_with_its_workload_and_nodes(
    broker_cluster: SimCluster, warm_image: str
) -> None:
    listed = broker_cluster.cli("catalog", "--json")

    entries = {entry["image"]: entry for entry in json.loads(listed.stdout)}
    assert entries[warm_image]["target_nodes"] == 2
    name = warm_image.rsplit("/", 1)[1].split(":")[0]  # the Deployment is named as its repo
    assert any(name in w and "Deployment" in w for w in entries[warm_image]["workloads"])
    table = broker_cluster.cli("catalog")
    assert warm_image in table.stdout


def test_rewarm_wait_exits_non_zero_when_an_image_cannot_be_pulled(
    broker_cluster: SimCluster, registry: Registry, warm_image: str
) -> None:
    missing = f"{registry.host}/e2e/missing-{uuid.uuid4().hex[:6]}:v1"  # never pushed
    apps = client.AppsV1Api(broker_cluster.api)
    apps.create_namespaced_deployment("default", deployment("broken", missing, replicas=0))
    wait_for(in_catalog(broker_cluster, missing), WARM_TIMEOUT, "catalog", broker_cluster)

    done = broker_cluster.cli("rewarm", "--wait", "--timeout", "60")

    assert done.returncode == 1, done.stdout + done.stderr + broker_cluster.logs()
    assert "FAILED" in done.stdout
    assert f"failed   {missing} on 2 node(s)" in done.stdout
    assert "image pull(s) failed" in done.stdout


def test_warm_status_json_matches_what_the_runtimes_hold(
    broker_cluster: SimCluster, warm_image: str
) -> None:
    shown = broker_cluster.cli("warm-status", "--json")

    assert shown.returncode == 1, shown.stderr  # the broken image is missing: exit code 1
    statuses = {status["node"]: status for status in json.loads(shown.stdout)["nodes"]}
    assert set(statuses) == set(broker_cluster.nodes)
    for node, probe in broker_cluster.probes.items():
        status, held = statuses[node], probe.tags()
        expected = set(status["warm_images"]) | set(status["missing"])
        assert status["expected"] == len(expected) >= 1  # after the previous test: 2, one broken
        assert set(status["warm_images"]) == expected & held
        assert set(status["missing"]) == expected - held
        assert set(status["failed"]) == expected - held
        assert all(reason for reason in status["failed"].values())
        assert status["last_rewarm_at"] is not None


def test_rewarm_wait_times_out_non_zero_for_a_node_that_does_not_answer(
    broker_cluster: SimCluster,
) -> None:
    node = sorted(broker_cluster.nodes)[1]
    worker = next(p for p in broker_cluster.processes if p.name == f"worker-{node}")
    worker.stop()
    try:
        done = broker_cluster.cli("rewarm", "--wait", "--timeout", "3", "--node", node)
    finally:
        worker.start()

    assert done.returncode == 1
    assert "1 node(s) did not report within 3s" in done.stdout


def test_beat_rewarms_every_interval_and_restores_a_removed_image(
    broker_cluster: SimCluster, warm_image: str
) -> None:
    node = sorted(broker_cluster.nodes)[1]
    env = {**broker_cluster.env, "WARM_REWARM_INTERVAL": "3", "WARM_REWARM_WINDOW": "1"}
    beat = broker_cluster.start(
        celery("beat", ["beat", "--loglevel=INFO"], env, broker_cluster.logdir)
    )
    try:
        # The first re-warm runs at once (a new leader); remove the image after it, so only a
        # periodic one can bring it back.
        wait_for(lambda: "re-warm sent to 2 node(s)" in beat.log_tail(), 30, "beat", broker_cluster)
        broker_cluster.probes[node].remove(warm_image)
        wait_for(
            lambda: warm_image in broker_cluster.probes[node].tags(),
            WARM_TIMEOUT,
            "a periodic re-warm to restore the image",
            broker_cluster,
        )
    finally:
        beat.stop()


@pytest.fixture(scope="module")
def flower(broker_cluster: SimCluster) -> Iterator[str]:
    port = free_port()
    env = {**broker_cluster.env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
    args = ["flower", f"--port={port}", "--address=127.0.0.1"]
    process = broker_cluster.start(celery("flower", args, env, broker_cluster.logdir))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{url}/healthcheck"), 30, "Flower", broker_cluster)
    yield url
    process.stop()


def test_flower_lists_the_node_workers_tasks_and_serves_metrics(
    broker_cluster: SimCluster, flower: str
) -> None:
    """On the workers' defaults (task events on, no remote control or heartbeats: four broker
    connections at most), Flower shows each node's tasks, from the task events alone."""
    assert requests.get(f"{flower}/api/tasks", timeout=10).status_code == 401
    # The cluster is shared with the tests above, which leave an image that cannot be pulled:
    # a re-warm then ends in FAILURE (exit 1) and is listed as such, which is what is checked.
    done = broker_cluster.cli("rewarm", "--wait", "--timeout", "60")
    assert done.returncode in (0, 1), done.stdout + done.stderr + broker_cluster.logs()
    expected = {f"warm@{node}" for node in broker_cluster.nodes}
    ended = {"SUCCESS": "task-succeeded", "FAILURE": "task-failed"}

    def rewarms() -> set[str]:
        answer = requests.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=30)
        tasks = answer.json().values() if answer.ok else []
        return {t["worker"] for t in tasks if t["name"] == REWARM_NODE and t["state"] in ended}

    wait_for(lambda: expected <= rewarms(), 60, "every node's re-warm in Flower", broker_cluster)
    metrics = requests.get(f"{flower}/metrics", auth=FLOWER_AUTH, timeout=10)
    assert metrics.status_code == 200
    node = sorted(broker_cluster.nodes)[0]
    labels = (f'task="{REWARM_NODE}"', f'worker="warm@{node}"')
    counted = [
        line_value(line)
        for line in metrics.text.splitlines()
        if all(x in line for x in labels) and any(f'type="{t}"' in line for t in ended.values())
    ]
    assert sum(counted) >= 1, metrics.text[-2000:]


def line_value(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False
