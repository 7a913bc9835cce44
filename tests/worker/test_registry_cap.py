"""The cluster-wide cap per registry end to end: two simulated nodes pulling through real
containerd from the real registry, behind a proxy that counts blob downloads in flight."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from worker_testing import ROOMY_DISK

from localcluster import Containerd, Registry, push_image
from localcluster.proxy import CountingProxy
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.models import Outcome
from tasks.settings import load_settings
from worker.agent import NodeAgent
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
