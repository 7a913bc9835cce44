"""A node worker SIGKILLed in the middle of pulls, and restarted as a DaemonSet restarts it.

Every setting is the product's default: on Redis an unacknowledged pull comes back only after
the visibility timeout (an hour), so a node is warm soon after its worker's restart only
because the worker reconciles its slice when it starts. Each kill lands while containerd's
content store is ingesting a layer (read from its ingest directory, not from the registry's log,
which has a line only once a blob was served), and presence is read through CRI, as kubelet
reads it.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
from cluster import DrillCluster, drill_cluster
from drills import Drill

from localcluster import Containerd, Registry, push_image
from localcluster.harness import registry_requests, wait_for
from tasks.models import Trigger

RESTART_BOUND = 30.0  # seconds from a worker's restart to its node warm again
KILLS = 20
IMAGES = 20
SETTLE_TIMEOUT = 180.0
MB = 1_000_000


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_worker_killed_mid_download_is_warm_within_30s_of_its_restart(
    drill: Drill, workdir: Path, registry: Registry, broker: str
) -> None:
    """A worker SIGKILLed while a 200 MB layer downloads, then restarted: warm within 30 s."""
    image = push_image(registry.host, f"fk/big-{uuid.uuid4().hex[:6]}", "v1", size_mib=200)
    repository = image.ref.split("/", 1)[1].rsplit(":", 1)[0]
    with drill_cluster(workdir, [registry.host], broker=broker) as cluster:
        cluster.deploy("big", image.ref)
        ref, written, total = _wait_mid_download(cluster.containerd, {})
        _kill(cluster)
        assert not cluster.holds(image.ref), "the pull finished before the kill"
        # The registry logs a request when it ends: the interrupted download's line may come
        # a moment after the kill, and must not be taken for one after the restart.
        layer_get = f"GET /v2/{repository}/blobs/{_digest(ref)}"
        wait_for(
            lambda: len(registry_requests(registry, layer_get)) == 1,
            10,
            "the registry to log the interrupted download",
        )
        served_before = len(registry_requests(registry, layer_get))
        cluster.worker.start()
        restarted = time.time()
        warm = cluster.wait_warm(image.ref, timeout=RESTART_BOUND)
        back = cluster.first_pulled(image.ref, after=restarted)
        time.sleep(1)  # a redelivered pull, if any, has had time to cost something
        downloads = len(registry_requests(registry, layer_get))
        reports = [e for e in cluster.events.of(image.ref) if e.at > restarted]
    # Redis keeps a dead worker's message for its visibility timeout (1 h): only the reconcile
    # can be in time. RabbitMQ requeues it at once, so the redelivered pull may lead; either
    # way single-flight and skip-if-present leave one download.
    redelivered = {Trigger.TASK, Trigger.REWARM}  # the watcher sent a pull and a re-warm
    expected = {Trigger.START} if broker == "redis" else {Trigger.START, *redelivered}
    assert back.trigger in expected, f"came back by {back.trigger}, not {expected}"
    assert downloads - served_before == 1, "the layer was downloaded again for a redelivered pull"
    drill.record("broker", broker)
    drill.record(
        "killed with this much of the layer in containerd's ingest",
        f"{written / MB:.0f} MB of {total / MB:.0f} MB",
    )
    drill.record("image present through CRI after the restart", f"{warm:.1f} s")
    drill.record("came back by", _how(back.trigger))
    drill.record(
        "its reports after the restart", ", ".join(f"{e.outcome} ({e.trigger})" for e in reports)
    )
    drill.record("layer requests the registry served after the restart", downloads - served_before)


def test_worker_killed_mid_download_20_times_every_image_ends_warm(
    drill: Drill, workdir: Path, registry: Registry
) -> None:
    """A worker SIGKILLed mid-download 20 times: every image ends warm."""
    tag = uuid.uuid4().hex[:6]
    images = [push_image(registry.host, f"fk/{tag}-{i}", "v1", size_mib=30) for i in range(IMAGES)]
    with drill_cluster(workdir, [registry.host]) as cluster:
        for index, image in enumerate(images):
            cluster.deploy(f"app-{index}", image.ref)
        interrupted: set[str] = set()
        progress: dict[str, tuple[int, int]] = {}
        for _ in range(KILLS):
            ref, _written, _total = _wait_mid_download(cluster.containerd, progress)
            _kill(cluster)
            interrupted.add(_digest(ref))
            progress = cluster.containerd.ingests()
            cluster.worker.start()
        restarted = time.monotonic()
        refs = [image.ref for image in images]
        wait_for(partial(_holds_all, cluster, refs), SETTLE_TIMEOUT, "all warm", cluster.logs)
        settle = time.monotonic() - restarted
    drill.record("SIGKILLs, each while containerd was ingesting a layer", KILLS)
    drill.record("distinct layers whose download a kill interrupted", len(interrupted))
    drill.record("images warm in the end (read through CRI)", f"{IMAGES}/{IMAGES}")
    drill.record("seconds from the last restart to all warm", f"{settle:.1f}")


def _wait_mid_download(
    node: Containerd, before: dict[str, tuple[int, int]], timeout: float = 60.0
) -> tuple[str, int, int]:
    """An ingest that has grown since ``before`` and is not complete: (ref, written, total)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ref, (written, total) in node.ingests().items():
            if before.get(ref, (0, 0))[0] < written < total:
                return ref, written, total
        time.sleep(0.002)
    raise AssertionError(f"no layer download in progress within {timeout:.0f} s")


def _holds_all(cluster: DrillCluster, refs: list[str]) -> bool:
    return all(cluster.holds(ref) for ref in refs)


def _kill(cluster: DrillCluster) -> None:
    pid = cluster.worker.pid
    assert pid is not None and cluster.worker.alive(), cluster.logs()
    os.kill(pid, signal.SIGKILL)  # mid-download: no ack, no goodbye
    cluster.worker.stop()  # reaps it


def _digest(ingest_ref: str) -> str:
    found = re.search(r"sha256:[0-9a-f]{64}", ingest_ref)
    assert found, f"no digest in the ingest ref {ingest_ref!r}"
    return found.group(0)


def _how(trigger: Trigger) -> str:
    return {
        Trigger.START: "the worker's reconcile at start (trigger start)",
        Trigger.TASK: "the redelivered pull task (trigger task)",
        Trigger.REWARM: "the redelivered re-warm task (trigger rewarm)",
    }.get(trigger, f"trigger {trigger}")
