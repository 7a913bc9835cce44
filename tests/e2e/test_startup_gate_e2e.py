"""The warm-before-schedule gate end to end: nodes join with the startup taint, each with its own
containerd and worker, and ``python -m watcher`` (gate on) takes the taint off.

What the runtime holds is read through CRI, never from the product's status; what the watcher
did to the Node is read from the API double (the Node, its Events, the request log), and the
time to untaint from the watcher's own /metrics.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import Containerd, FakeKubeAPI, Registry, product, push_image
from localcluster.manifests import deployment, node
from localcluster.ports import free_port
from localcluster.services import NatsServer, RedisServer

from .conftest import CriProbe, SimCluster, start_watcher, wait_for

TAINT = "warm-images.io/warming"
# The setting under test for the node whose registry is down; a node whose images are warm is
# untainted long before it, so reaching it there would fail the first test.
DEADLINE = 40
BROKER_DB = 7


@dataclass
class GateCluster:
    sim: SimCluster
    base: Path
    registry: Registry
    metrics_port: int
    plain: str  # a node without the taint, there from the start

    def join(
        self, name: str, labels: dict[str, str] | None = None, *, tainted: bool = True
    ) -> None:
        """A node registers (with the startup taint), then its containerd and worker start, as
        a DaemonSet's pod would once the node is there."""
        body = node(name, labels)
        if tainted:
            body["spec"] = {"taints": [{"key": TAINT, "effect": "NoSchedule"}]}
        client.CoreV1Api(self.sim.api).create_node(body)
        runtime = Containerd(self.base, name[-6:], insecure_registries=[self.registry.host])
        self.sim.nodes[name] = runtime.start()
        self.sim.probes[name] = CriProbe(runtime.endpoint)
        self.sim.start(product.worker(name, runtime.endpoint, self.sim.env, self.sim.logdir))

    def taints(self, name: str) -> list[str]:
        found = client.CoreV1Api(self.sim.api).read_node(name)
        return [taint.key for taint in (found.spec.taints if found.spec else None) or ()]

    def node_events(self, name: str) -> list[Any]:
        events = client.CoreV1Api(self.sim.api).list_namespaced_event("default").items
        return [e for e in events if e.involved_object.name == name]

    def untaints(self, reason: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        wanted = f'warm_watcher_node_untaint_seconds_count{{reason="{reason}"}} '
        lines = [line for line in text.splitlines() if line.startswith(wanted)]
        return float(lines[0].split()[-1]) if lines else 0.0


@pytest.fixture(scope="module")
def gate(workdir: Path, redis_server: RedisServer, registry: Registry) -> Iterator[GateCluster]:
    suffix = uuid.uuid4().hex[:6]
    base = workdir / f"gate{suffix}"
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(FakeKubeAPI(bookmark_interval=0.5))
        nats = stack.enter_context(NatsServer(base / "nats"))  # its own catalog and status
        env = product.product_env(  # the workers': only the watcher serves /metrics here
            broker_url=f"{redis_server.url}/{BROKER_DB}",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(base / "kubeconfig"),
            WARM_STARTUP_TAINT=TAINT,
            WARM_STARTUP_TAINT_DEADLINE=str(DEADLINE),
            WARM_METRICS_PORT="0",
            WARM_HEALTH_PORT="0",
        )
        sim = SimCluster(kube, kube.api_client(), {}, {}, env, base / "logs")
        cluster = GateCluster(sim, base, registry, 0, f"plain-{suffix}")
        client.CoreV1Api(sim.api).create_node(node(cluster.plain))
        try:
            cluster.metrics_port = start_watcher(sim)
            yield cluster
        finally:
            sim.stop()


def test_a_tainted_node_is_untainted_once_its_three_images_are_in_the_runtime(
    gate: GateCluster, registry: Registry
) -> None:
    tag = uuid.uuid4().hex[:6]
    images = [
        push_image(registry.host, f"e2e/gate-big-{tag}", "v1", size_mib=100).ref,
        push_image(registry.host, f"e2e/gate-a-{tag}", "v1", size_mib=5).ref,
        push_image(registry.host, f"e2e/gate-b-{tag}", "v1", size_mib=5).ref,
    ]
    apps = client.AppsV1Api(gate.sim.api)
    for index, image in enumerate(images):
        apps.create_namespaced_deployment("default", deployment(f"gate{index}-{tag}", image))
    name = f"gated-{tag}"
    joined = time.monotonic()
    gate.join(name)

    # Each sample reads the runtime, then the Node: a node seen untainted with an image missing
    # from the runtime just before would be a taint removed before its images were warm.
    samples: list[tuple[set[str], bool]] = []

    def untainted() -> bool:
        held = gate.sim.probes[name].tags() & set(images)
        samples.append((held, TAINT in gate.taints(name)))
        return not samples[-1][1]

    wait_for(untainted, DEADLINE, "the taint to come off the warm node", gate.sim)
    seconds = time.monotonic() - joined
    print(f"\nnode joined -> 3 images (100 MiB + 2 x 5 MiB) warm and taint removed: {seconds:.1f}s")
    assert any(tainted and held != set(images) for held, tainted in samples), (
        "the node was never seen tainted while its images were missing"
    )
    early = [held for held, tainted in samples if not tainted and held != set(images)]
    assert not early, f"taint removed while the runtime lacked {set(images) - early[0]}"
    assert gate.sim.probes[name].tags() >= set(images)
    wait_for(lambda: bool(gate.node_events(name)), 30, "the node's Event", gate.sim)
    (event,) = gate.node_events(name)
    print(f"Event {event.reason}: {event.message}")
    assert (event.reason, event.type) == ("ImagesWarm", "Normal"), event.message
    assert "all 3 gating images are present" in event.message
    assert gate.untaints("warm") == 1


def test_a_node_whose_registry_is_down_is_untainted_at_the_deadline_with_the_failures(
    gate: GateCluster,
) -> None:
    """The node's 3 images everywhere are warm; its own 3, from a registry that is down, are
    not: the deadline frees it, and its Event lists them."""
    tag = uuid.uuid4().hex[:6]
    registry = f"127.0.0.1:{free_port()}"  # nothing listens there
    # Three of its images: a pull that fails for a while is retried (5 times by default, with
    # jittered backoff), so one image could give up before the deadline by chance; all three
    # doing so, which would rightly free the node early as "failures", practically never.
    down = [f"{registry}/e2e/gate-down-{tag}-{index}:v1" for index in range(3)]
    apps = client.AppsV1Api(gate.sim.api)
    for index, image in enumerate(down):
        body = deployment(f"gate-down{index}-{tag}", image)
        body["spec"]["template"]["spec"]["nodeSelector"] = {"pool": f"broken-{tag}"}
        apps.create_namespaced_deployment("default", body)
    name = f"broken-{tag}"
    joined = time.monotonic()
    gate.join(name, {"pool": f"broken-{tag}"})

    wait_for(lambda: TAINT not in gate.taints(name), DEADLINE + 30, "the deadline", gate.sim)
    seconds = time.monotonic() - joined
    print(
        f"\nnode with its registry down: taint removed after {seconds:.1f}s (deadline {DEADLINE}s)"
    )
    assert seconds >= DEADLINE - 2, "untainted before the deadline with an image not warm"
    wait_for(lambda: bool(gate.node_events(name)), 30, "the node's Event", gate.sim)
    (event,) = gate.node_events(name)
    print(f"Event {event.reason}: {event.message}")
    assert (event.reason, event.type) == ("WarmDeadline", "Warning"), event.message
    for image in down:  # each with its state and the runtime's own words
        assert f"{image} (retrying: " in event.message or f"{image} (failed: " in event.message
    assert "connection refused" in event.message, event.message
    assert gate.untaints("deadline") == 1


def test_a_node_without_the_taint_is_never_patched(gate: GateCluster) -> None:
    """Run last: by now the plain node has been known for longer than the deadline."""
    patched = [str(r.name) for r in gate.sim.kube.requests("nodes") if r.verb == "patch"]
    assert gate.plain not in patched
    assert sorted(patched) == sorted(gate.sim.nodes), "each gated node is patched exactly once"
    assert gate.taints(gate.plain) == []
    assert gate.node_events(gate.plain) == []
