"""The cluster-wide cap per registry end to end: two simulated nodes pulling through real
containerd from the real registry, behind a proxy that counts blob downloads in flight; and
``python -m worker`` SIGKILLed mid-pull, whose permit comes back within its lease."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from worker_testing import ROOMY_DISK

from localcluster import Containerd, Registry, push_image
from localcluster.harness import start_worker, wait_for
from localcluster.proxy import CountingProxy
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import Outcome
from tasks.names import PULL_IMAGE
from tasks.settings import load_settings
from worker.agent import NodeAgent
from worker.permits import BUCKET, LEASE, permit_prefix
from worker.runtime.cri import CriRuntime


@pytest.fixture
def proxy(registry: Registry) -> Iterator[CountingProxy]:
    with CountingProxy(registry.host, blob_delay=1.0) as counting:
        yield counting


@pytest.fixture
def proxied_node(workdir: Path, proxy: CountingProxy) -> Iterator[Containerd]:
    node = Containerd(
        workdir / f"c{uuid.uuid4().hex[:4]}", "node", insecure_registries=[proxy.host]
    )
    with node:
        yield node


def waits_counted(registry: str) -> float:
    return (
        REGISTRY.get_sample_value("warm_registry_permit_waits_total", {"registry": registry}) or 0
    )


@pytest.mark.parametrize("limit", [1, 2])
def test_peak_blob_downloads_from_a_registry_stay_within_its_limit(
    limit: int,
    private_nats: NatsServer,
    private_bus: NatsBus,
    registry: Registry,
    proxy: CountingProxy,
    proxied_node: Containerd,
) -> None:
    """Two nodes of two pull slots each would download four blobs at once; the setting under
    test holds them to ``limit`` at the registry, and every pull still completes."""
    settings = load_settings(
        {
            "WARM_NATS_URL": private_nats.url,
            "WARM_RUNTIME_ENDPOINT": proxied_node.endpoint,
            "WARM_REGISTRY_PULL_LIMITS": json.dumps({proxy.host: limit}),
        }
    )
    settings = replace(settings, runtime=replace(settings.runtime, disk_budget_percent=ROOMY_DISK))
    runtimes = [CriRuntime(proxied_node.endpoint) for _ in range(2)]
    agents = [
        NodeAgent(settings, f"node-{index}", runtime, private_bus)
        for index, runtime in enumerate(runtimes)
    ]
    references = [
        push_image(registry.host, f"cap/img-{uuid.uuid4().hex[:8]}", "v1", size_mib=0.5).ref
        for _ in range(4)
    ]
    through_proxy = [ref.replace(registry.host, proxy.host, 1) for ref in references]
    waits_before = waits_counted(proxy.host)

    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda job: agents[job[0] % 2].pull(job[1]).outcome, enumerate(through_proxy))
        )
    for runtime in runtimes:
        runtime.close()

    assert results == [Outcome.PULLED] * 4
    assert proxy.blob_downloads == 8  # a config and a layer per image
    assert proxy.peak_blob_downloads == limit  # reached, never passed
    assert waits_counted(proxy.host) > waits_before  # pulls did wait for a permit


def test_a_sigkilled_workers_permit_comes_back_within_its_lease(
    registry: Registry,
    proxy: CountingProxy,
    proxied_node: Containerd,
    redis_server: RedisServer,
    nats_server: NatsServer,
    bus: NatsBus,
    workdir: Path,
) -> None:
    proxy.blob_delay = 10.0  # the pull is still running when the worker dies
    image = push_image(registry.host, f"cap/held-{uuid.uuid4().hex[:8]}", "v1", size_mib=0.5)
    prefix = permit_prefix(proxy.host)
    worker = start_worker(
        proxied_node.endpoint,
        redis_server,
        nats_server,
        workdir / "logs",
        WARM_REGISTRY_PULL_LIMITS=json.dumps({proxy.host: 1}),
    )
    try:
        worker.send(PULL_IMAGE, image=image.ref.replace(registry.host, proxy.host, 1))
        wait_for(lambda: bool(proxy.blob_downloads), 60, "the worker to start downloading")
        (key,) = bus.kv_subjects(BUCKET, prefix)
        held = bus.kv_get(BUCKET, key)
        assert held is not None and json.loads(held[0])["holder"] == worker.node
        assert worker.process.pid is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not bus.kv_subjects(BUCKET, prefix), LEASE + 2, "the permit to expire")
    finally:
        worker.stop()
    print(f"\nSIGKILLed worker's permit back after {time.monotonic() - killed:.1f}s")
