"""A node worker SIGKILLed in the middle of pulls, again and again."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from drills import Drill

from localcluster import Containerd, Registry, push_image
from localcluster.harness import Worker, registry_requests, start_worker
from localcluster.services import NatsServer, RedisServer
from tasks.names import PULL_IMAGE

KILLS = 20
IMAGES = 20
VISIBILITY_TIMEOUT = 2  # seconds before Redis hands a dead worker's message out again
SETTLE_TIMEOUT = 180.0


def test_worker_killed_mid_pull_20_times_every_image_ends_warm(
    drill: Drill,
    workdir: Path,
    registry: Registry,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    """A worker SIGKILLed mid-pull 20 times: every image ends warm."""
    tag = uuid.uuid4().hex[:6]
    images = [push_image(registry.host, f"fk/{tag}-{i}", "v1", size_mib=30) for i in range(IMAGES)]
    with Containerd(workdir / f"k{tag}", "node", insecure_registries=[registry.host]) as node:
        worker = start_worker(
            node.endpoint,
            redis_server,
            nats_server,
            workdir / "logs",
            WARM_BROKER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        )
        try:
            for image in images:
                worker.send(PULL_IMAGE, image=image.ref)
            interrupted = _kill_mid_pull(worker, registry, tag, KILLS)
            started = time.monotonic()
            _wait_all_warm(node, [image.ref for image in images])
            settle = time.monotonic() - started
        finally:
            worker.stop()
    drill.record("SIGKILLs, each while a layer was downloading", KILLS)
    drill.record("distinct images whose pull a kill interrupted", interrupted)
    drill.record("images warm in the end (checked through containerd)", f"{IMAGES}/{IMAGES}")
    drill.record("seconds from the last restart to all warm", f"{settle:.1f}")


def _kill_mid_pull(worker: Worker, registry: Registry, tag: str, kills: int) -> int:
    """Kill the worker each time a new layer download starts; restart it like a DaemonSet."""
    interrupted: set[str] = set()
    for _ in range(kills):
        seen = len(_blob_gets(registry, tag))
        deadline = time.monotonic() + 30
        while len(_blob_gets(registry, tag)) <= seen and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(_blob_gets(registry, tag)) > seen, "no pull started after a restart"
        interrupted.update(
            line.split("/v2/")[1].split("/")[1] for line in _blob_gets(registry, tag)
        )
        assert worker.process.pid is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.process.stop()  # reap it
        time.sleep(max(0.0, killed + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
        worker.start()
    return len(interrupted)


def _blob_gets(registry: Registry, tag: str) -> list[str]:
    return [
        line
        for line in registry_requests(registry, f"/v2/fk/{tag}-")
        if "GET" in line and "/blobs/" in line
    ]


def _wait_all_warm(node: Containerd, refs: list[str]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while missing := set(refs) - node.image_refs():
        assert time.monotonic() < deadline, f"never warm: {sorted(missing)}"
        time.sleep(0.2)
