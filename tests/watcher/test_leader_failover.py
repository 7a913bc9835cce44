"""Two ``python -m watcher`` processes, one Lease: only the leader dispatches, and when it dies
the standby takes over and dispatches what comes next."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client
from watcher_testing import create, node, uid, wait_for, workload

from localcluster import FakeKubeAPI, product
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.names import REWARM_NODE
from tasks.settings import NatsSettings

LEASE_SECONDS = 3
REWARM = REWARM_NODE.encode()


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.5) as api:
        yield api


def test_the_standby_takes_over_when_the_leader_dies(
    kube: FakeKubeAPI,
    nats_server: NatsServer,
    redis_server: RedisServer,
    workdir: Path,
) -> None:
    tag = uid()
    api = kube.api_client()
    name = f"n-{tag}"
    client.CoreV1Api(api).create_node(node(name))
    broker_url = f"{redis_server.url}/6"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    env = product.product_env(
        broker_url=broker_url,
        nats_url=nats_server.url,
        kubeconfig=kube.write_kubeconfig(workdir / f"kubeconfig-{tag}"),
        WARM_LEADER_ELECTION="true",
        WARM_LEASE_NAME=f"watcher-{tag}",
        WARM_LEASE_DURATION=str(LEASE_SECONDS),
        WARM_LEASE_RENEW_DEADLINE="2",
        WARM_LEASE_RETRY_PERIOD="0.5",
        WARM_HEALTH_PORT="0",
        WARM_METRICS_PORT="0",
    )
    argv = [sys.executable, "-m", "watcher"]
    logdir = workdir / f"leader-{tag}"
    replicas = [product.ProductProcess(f"watcher-{i}", argv, env, logdir) for i in "ab"]
    coordination = client.CoordinationV1Api(api)

    def holder() -> str | None:
        try:
            lease = coordination.read_namespaced_lease(f"watcher-{tag}", "default")
        except client.ApiException:
            return None
        return lease.spec.holder_identity if lease.spec else None

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in replicas)

    def pulls_of(image: str) -> list[Any]:
        return [raw for raw in broker.lrange(f"warm.node.{name}", 0, -1) if image.encode() in raw]

    def rewarms() -> list[Any]:
        return [raw for raw in broker.lrange(f"warm.node.{name}", 0, -1) if REWARM in raw]

    with NatsBus(NatsSettings(url=nats_server.url)) as bus:
        catalog = CatalogStore(bus)
        try:
            for replica in replicas:
                replica.start()
            leader_identity = wait_for(holder, 30, "a leader")
            leader = next(p for p in replicas if leader_identity.endswith(f"_{p.pid}"))
            standby = next(p for p in replicas if p is not leader)

            # The new leader's first flush re-warms every node; new images come after it.
            wait_for(rewarms, 30, f"the leader's first sync\n{logs()}")
            first = f"registry.test/first-{tag}:1"
            create(api, workload("Deployment", f"first-{tag}", first))
            wait_for(lambda: pulls_of(first), 30, f"the leader's pull\n{logs()}")
            assert len(pulls_of(first)) == 1, "only the leader dispatches"

            assert leader.pid is not None
            broker.delete(f"warm.node.{name}")
            os.kill(leader.pid, signal.SIGKILL)  # no goodbye: the lease must expire
            during = f"registry.test/during-{tag}:1"
            create(api, workload("Deployment", f"during-{tag}", during))
            wait_for(
                lambda: holder() == standby_identity(leader_identity, standby.pid),
                30,
                f"the standby holding the lease\n{logs()}",
            )
            # A new leader cannot know what the old one sent: it re-warms every node, and the
            # image created while nobody led is in the slice the node re-warms from.
            wait_for(lambda: rewarms(), 30, f"the new leader's re-warm\n{logs()}")
            assert during in {item.image for item in catalog.get_slice(name)[0].images}
            after = f"registry.test/after-{tag}:1"
            create(api, workload("Deployment", f"after-{tag}", after))
            wait_for(lambda: pulls_of(after), 30, f"the new leader's pull\n{logs()}")
            assert after in {entry.image for entry in catalog.entries()}
        finally:
            for replica in replicas:
                replica.stop()


def standby_identity(leader_identity: str, pid: int | None) -> str:
    """Identities are <hostname>_<pid>; both replicas run on this host."""
    return f"{leader_identity.rsplit('_', 1)[0]}_{pid}"
