"""The startup gate against the API double, with real NATS: which images gate a node, what the
status record must say before the taint comes off, and that only the leader ever patches.

The node's worker is played by writing its status record through :class:`StatusStore`, as a
worker does; containerd and real pulls are in tests/e2e/test_startup_gate_e2e.py.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kubernetes import client
from watcher_testing import WatchedCluster, create, node, uid, wait_for, workload

from localcluster import FakeKubeAPI, product
from localcluster.ports import free_port
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import Outcome, PullResult
from tasks.settings import NatsSettings, load_settings
from tasks.status import StatusStore
from watcher.catalog import CatalogState
from watcher.gate import CHECK_INTERVAL, StartupGate
from watcher.targeting import node_facts

TAINT = "warm-images.io/warming"
TAINTED = [{"key": TAINT, "effect": "NoSchedule"}]


def taints(cluster_api: client.ApiClient, name: str) -> list[str]:
    found = client.CoreV1Api(cluster_api).read_node(name)
    return [taint.key for taint in (found.spec.taints if found.spec else None) or ()]


def node_events(cluster_api: client.ApiClient, name: str) -> list[Any]:
    events = client.CoreV1Api(cluster_api).list_namespaced_event("default").items
    return [event for event in events if event.involved_object.name == name]


def test_only_annotated_workloads_gate_and_a_permanent_failure_releases_the_node(
    start_watcher: Callable[..., WatchedCluster], bus: NatsBus
) -> None:
    tag = uid()
    name = f"n-{tag}"
    cluster = start_watcher(
        nodes=[node(name, taints=TAINTED), node(f"other-{tag}")],
        startup_taint=TAINT,
        startup_gate_images="annotated",
    )
    gating, rare = f"registry.test/gating-{tag}:1", f"registry.test/rare-{tag}:1"
    annotated = {"warm-images.io/gate": "true"}
    create(cluster.api, workload("Deployment", f"g-{tag}", gating, annotations=annotated))
    create(cluster.api, workload("Deployment", f"r-{tag}", rare))
    # The startup taint does not keep the node's workloads' images off it: it is why they warm.
    wait_for(lambda: cluster.slice_images(name) == {gating, rare}, what="the tainted node's slice")
    status = StatusStore(bus)
    _, revision = cluster.catalog.get_slice(name)
    status.record_rewarm(name, [gating, rare], revision, present=[])  # both missing
    time.sleep(3 * CHECK_INTERVAL)
    assert taints(cluster.api, name) == [TAINT], "untainted with its gating image missing"

    failed = PullResult(name, gating, Outcome.FAILED, reason="manifest unknown")
    status.record_many(name, [failed])  # the rarely used image is still missing: no matter
    wait_for(lambda: taints(cluster.api, name) == [], what="the taint removed")
    (event,) = wait_for(lambda: node_events(cluster.api, name), what="the node's Event")
    assert (event.reason, event.type) == ("ImagesFailed", "Warning")
    assert f"0 of 1 gating images present, 1 failed permanently: {gating} (failed: " in (
        event.message
    )
    assert rare not in event.message
    patched = [r.name for r in cluster.kube.requests("nodes") if r.verb == "patch"]
    assert patched == [name], "only the tainted node is patched, once"


def test_a_record_older_than_the_slice_does_not_release_the_node(
    start_watcher: Callable[..., WatchedCluster], bus: NatsBus
) -> None:
    tag = uid()
    name = f"n-{tag}"
    cluster = start_watcher(nodes=[node(name, taints=TAINTED)], startup_taint=TAINT)
    first, second = f"registry.test/first-{tag}:1", f"registry.test/second-{tag}:1"
    create(cluster.api, workload("Deployment", f"a-{tag}", first))
    wait_for(lambda: cluster.slice_images(name) == {first}, what="the first slice")
    _, old = cluster.catalog.get_slice(name)
    create(cluster.api, workload("Deployment", f"b-{tag}", second))
    wait_for(lambda: cluster.slice_images(name) == {first, second}, what="the second slice")
    status = StatusStore(bus)
    status.record_rewarm(name, [first], old, present=[first])  # warm, for the old slice only
    time.sleep(3 * CHECK_INTERVAL)
    assert taints(cluster.api, name) == [TAINT], "a record of an older slice vouched for a new one"

    _, current = cluster.catalog.get_slice(name)
    status.record_rewarm(name, [first, second], current, present=[first, second])
    wait_for(lambda: taints(cluster.api, name) == [], what="the taint removed")
    (event,) = wait_for(lambda: node_events(cluster.api, name), what="the node's Event")
    assert (event.reason, event.type) == ("ImagesWarm", "Normal")
    assert "all 2 gating images are present" in event.message


def test_a_standby_never_removes_the_taint_and_the_leader_does(
    nats_server: NatsServer, redis_server: RedisServer, workdir: Path
) -> None:
    tag = uid()
    name = f"n-{tag}"
    lease = f"gate-{tag}"
    with FakeKubeAPI(bookmark_interval=0.5) as kube:
        api = kube.api_client()
        client.CoreV1Api(api).create_node(node(name, taints=TAINTED))
        coordination = client.CoordinationV1Api(api)
        now = datetime.datetime.now(datetime.UTC)
        held = client.V1Lease(
            metadata=client.V1ObjectMeta(name=lease),
            spec=client.V1LeaseSpec(
                holder_identity="another-watcher",
                lease_duration_seconds=3600,
                acquire_time=now,
                renew_time=now,
            ),
        )
        coordination.create_namespaced_lease("default", held)
        broker_url = f"{redis_server.url}/8"
        redis.Redis.from_url(broker_url).flushdb()
        env = product.product_env(
            broker_url=broker_url,
            nats_url=nats_server.url,
            kubeconfig=kube.write_kubeconfig(workdir / f"kubeconfig-{tag}"),
            WARM_LEADER_ELECTION="true",
            WARM_LEASE_NAME=lease,
            WARM_LEASE_DURATION="3600",
            WARM_LEASE_RENEW_DEADLINE="2",
            WARM_LEASE_RETRY_PERIOD="0.5",
            WARM_STARTUP_TAINT=TAINT,
            WARM_STARTUP_TAINT_DEADLINE="2",
            WARM_HEALTH_PORT="0",
            WARM_METRICS_PORT="0",
        )
        argv = [sys.executable, "-m", "watcher"]
        standby = product.ProductProcess("watcher", argv, env, workdir / f"gate-{tag}")
        try:
            standby.start()
            # Past the deadline, for several of the gate's checks: a leader would untaint now.
            time.sleep(2 + 4 * CHECK_INTERVAL)
            assert standby.alive(), standby.log_tail()
            assert [r for r in kube.requests("nodes") if r.verb == "patch"] == []
            assert taints(api, name) == [TAINT]

            coordination.delete_namespaced_lease(lease, "default")  # the other leader is gone
            logs = standby.log_tail
            wait_for(lambda: taints(api, name) == [], 30, f"the leader's untaint\n{logs()}")
            (event,) = wait_for(lambda: node_events(api, name), 30, "the node's Event")
            assert (event.reason, event.type) == ("WarmDeadline", "Warning")
        finally:
            standby.stop()


def test_at_the_deadline_a_node_is_untainted_even_with_nats_down_but_never_by_a_standby() -> None:
    """The gate alone, on the API double, with a NATS that does not answer: its status cannot
    be read, yet the deadline still frees the node; a gate that is not leading patches nothing."""
    tag = uid()
    name = f"n-{tag}"
    settings = load_settings({"WARM_STARTUP_TAINT": TAINT, "WARM_STARTUP_TAINT_DEADLINE": "60"})
    state = CatalogState(settings.watch)
    with (
        FakeKubeAPI() as kube,
        NatsBus(NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)) as bus,
    ):
        api = kube.api_client()
        client.CoreV1Api(api).create_node(node(name, taints=TAINTED))
        obj = client.CoreV1Api(api).read_node(name)
        raw = api.sanitize_for_serialization(obj)
        state.nodes[name] = node_facts(raw, startup_taint=TAINT)
        created = state.nodes[name].created
        assert created is not None
        leading = False
        now = created + 30.0
        gate = StartupGate(
            api,
            bus,
            state,
            settings.watch,
            leading=lambda: leading,
            identity="t",
            clock=lambda: now,
        )
        gate.check()  # before the deadline, status unknown: wait
        now = created + 61.0
        gate.check()  # past it, but not leading
        assert [r for r in kube.requests("nodes") if r.verb == "patch"] == []
        leading, now = True, now + CHECK_INTERVAL
        gate.check()
        assert taints(api, name) == []
        (event,) = node_events(api, name)
        assert (event.reason, event.type) == ("WarmDeadline", "Warning")
        assert "deadline passed (status unknown: " in event.message
