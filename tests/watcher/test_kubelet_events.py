"""The kubelet Events watch against the API double, with real NATS: only the leader watches and
publishes, a new leader carries on from what the last one published, and nodes that leave
take their counts with them."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

from kubernetes import client
from watcher_testing import node, uid, wait_for

from localcluster import FakeKubeAPI, product
from localcluster.manifests import deployment, kubelet_event
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.kubelet import KubeletStore
from tasks.settings import NatsSettings
from watcher.kubelet_events import PUBLISH_INTERVAL

NGINX = "nginx:1.25"  # in the catalog: a Deployment uses it
HIT = f'Container image "{NGINX}" already present on machine'
MISS = f'Successfully pulled image "{NGINX}" in 1.5s (2.5s including waiting)'


def reads(kube: FakeKubeAPI) -> set[str]:
    """How Events were read (the test's own creates aside)."""
    return {r.verb for r in kube.requests("events") if r.verb != "create"}


def pulled(api: client.ApiClient, name: str, node_name: str, message: str) -> None:
    at = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    body = kubelet_event(name, node_name, message, pod_name=f"pod-{name}", at=at)
    client.CoreV1Api(api).create_namespaced_event("default", body)


def test_only_the_leader_watches_events_and_a_new_leader_carries_on(
    nats_server: NatsServer, redis_server: RedisServer, workdir: Path
) -> None:
    tag = uid()
    a, b, lease = f"a-{tag}", f"b-{tag}", f"kubelet-{tag}"
    with (
        FakeKubeAPI(bookmark_interval=0.5) as kube,
        NatsServer(workdir / f"nats-{tag}") as nats,
        NatsBus(NatsSettings(url=nats.url)) as bus,
    ):
        api = kube.api_client()
        core = client.CoreV1Api(api)
        for name in (a, b):
            core.create_node(node(name))
        client.AppsV1Api(api).create_namespaced_deployment("default", deployment("web", NGINX))
        pulled(api, "e1", a, HIT)
        pulled(api, "e2", b, MISS)
        held = client.V1Lease(
            metadata=client.V1ObjectMeta(name=lease),
            spec=client.V1LeaseSpec(holder_identity="another-watcher", lease_duration_seconds=3600),
        )
        coordination = client.CoordinationV1Api(api)
        coordination.create_namespaced_lease("default", held)
        env = product.product_env(
            broker_url=f"{redis_server.url}/9",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(workdir / f"kubeconfig-{tag}"),
            WARM_LEADER_ELECTION="true",
            WARM_LEASE_NAME=lease,
            WARM_LEASE_DURATION="3600",
            WARM_LEASE_RENEW_DEADLINE="2",
            WARM_LEASE_RETRY_PERIOD="0.5",
            WARM_HEALTH_PORT="0",
            WARM_METRICS_PORT="0",
        )
        store = KubeletStore(bus)
        argv = [sys.executable, "-m", "watcher"]
        logdir = workdir / f"kubelet-{tag}"
        standby = product.ProductProcess("watcher", argv, env, logdir)
        try:
            standby.start()
            wait_for(lambda: "initial lists done" in standby.log_tail(), 30, "the first lists")
            time.sleep(2 * PUBLISH_INTERVAL)
            assert standby.alive(), standby.log_tail()
            assert reads(kube) == set()  # a standby neither lists nor watches Events
            assert store.get_summary() is None

            coordination.delete_namespaced_lease(lease, "default")  # the other leader is gone
            wait_for(lambda: store.get_node(b).misses == 1, 30, f"the counts\n{standby.log_tail()}")
            assert reads(kube) == {"list", "watch"}
            assert store.get_node(a).hits == 1
            assert store.get_node(b).seconds_waited == 2.5
        finally:
            standby.stop()  # releases the lease

        # The next leader lists the same Events again: they were published, none counts twice;
        # node b leaves, and takes its counts along.
        core.delete_node(b)
        leader = product.ProductProcess("watcher", argv, env, logdir)
        try:
            leader.start()
            wait_for(lambda: "initial lists done" in leader.log_tail(), 30, "the first lists")
            pulled(api, "e3", a, HIT)
            wait_for(lambda: store.get_node(a).hits == 2, 30, f"the new hit\n{leader.log_tail()}")
            wait_for(lambda: store.get_node(b).misses == 0, 30, "node b's counts gone")
            summary = store.get_summary()
            assert summary is not None
            image = summary.images["docker.io/library/nginx:1.25"]
            assert (image.hits, image.misses) == (2, 1)
        finally:
            leader.stop()


def test_a_cluster_without_events_k8s_io_v1_is_watched_through_core_v1(
    redis_server: RedisServer, workdir: Path
) -> None:
    """Before Kubernetes 1.19 (or where RBAC allows only core/v1), events.k8s.io/v1 answers
    404: the kubelet's Events are read through core/v1 instead."""
    tag = uid()
    with (
        FakeKubeAPI(bookmark_interval=0.5, events_v1=False) as kube,
        NatsServer(workdir / f"nats-{tag}") as nats,
        NatsBus(NatsSettings(url=nats.url)) as bus,
    ):
        api = kube.api_client()
        client.CoreV1Api(api).create_node(node(f"a-{tag}"))
        client.AppsV1Api(api).create_namespaced_deployment("default", deployment("web", NGINX))
        pulled(api, "e1", f"a-{tag}", MISS)
        env = product.product_env(
            broker_url=f"{redis_server.url}/9",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(workdir / f"kubeconfig-{tag}"),
            WARM_HEALTH_PORT="0",
            WARM_METRICS_PORT="0",
        )
        argv = [sys.executable, "-m", "watcher"]
        watcher = product.ProductProcess("watcher", argv, env, workdir / f"core-{tag}")
        store = KubeletStore(bus)
        try:
            watcher.start()
            wait_for(lambda: store.get_node(f"a-{tag}").misses == 1, 30, "the counts")
            assert "watching core/v1 Events" in watcher.log_tail()
        finally:
            watcher.stop()
