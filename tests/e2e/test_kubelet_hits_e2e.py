"""The warm-hit ratio end to end: the kubelet's own Pulled Events, counted by ``python -m
watcher`` and shown by ``celery -A tasks warm-status`` and the watcher's /metrics.

Two nodes, each with its containerd and worker, warm a catalog image; the seconds a hit saved
are the pull times those workers reported on NATS. Then Events are written to the API double
as kubelets of several versions write them, through core/v1 and events.k8s.io/v1 (one store,
two views, as in the apiserver), with repeats raising an Event's count or series, an image the
catalog lacks, and other reasons. What the product shows is checked against what was fed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import queue
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import Containerd, FakeKubeAPI, Registry, product, push_image
from localcluster.manifests import deployment, kubelet_event, node
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import Outcome, PullResult
from tasks.names import PULL_EVENTS
from tasks.settings import NatsSettings

from .conftest import CriProbe, SimCluster, start_watcher, wait_for

BROKER_DB = 8
# The kubelet's Pulled messages, by the versions that wrote them.
HIT = 'Container image "{}" already present on machine'
HIT_133 = HIT + " and can be accessed by the pod"
MISS_119 = 'Successfully pulled image "{}"'
MISS_120 = MISS_119 + " in {}"
MISS_125 = MISS_120 + " ({} including waiting)"
MISS_130 = MISS_125 + ". Image size: 20971520 bytes."
POOL = "karpenter.sh/nodepool"


@dataclass
class HitsCluster:
    sim: SimCluster
    metrics_port: int
    nodes: list[str]
    image: str  # in the catalog, warmed by the workers
    pull_seconds: list[float]  # what the workers reported for it

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                total += float(line.split()[-1])
        return total

    def status(self) -> dict[str, Any]:
        shown = self.sim.cli("warm-status", "--json")
        assert shown.returncode in (0, 1), shown.stderr
        return dict(json.loads(shown.stdout))


@pytest.fixture(scope="module")
def hits(workdir: Path, redis_server: RedisServer, registry: Registry) -> Iterator[HitsCluster]:
    suffix = uuid.uuid4().hex[:6]
    base = workdir / f"hits{suffix}"
    names = [f"kh-a-{suffix}", f"kh-b-{suffix}"]
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(FakeKubeAPI(bookmark_interval=0.5))
        nats = stack.enter_context(NatsServer(base / "nats"))
        env = product.product_env(
            broker_url=f"{redis_server.url}/{BROKER_DB}",
            nats_url=nats.url,
            kubeconfig=kube.write_kubeconfig(base / "kubeconfig"),
            WARM_METRICS_PORT="0",  # the watcher gets a free port of its own below
            WARM_HEALTH_PORT="0",
        )
        sim = SimCluster(kube, kube.api_client(), {}, {}, env, base / "logs")
        stack.callback(sim.stop)
        for index, name in enumerate(names):
            client.CoreV1Api(sim.api).create_node(node(name, {POOL: f"pool-{index}"}))
            runtime = Containerd(base, name[-6:] + str(index), insecure_registries=[registry.host])
            sim.nodes[name] = runtime.start()
            sim.probes[name] = CriProbe(runtime.endpoint)
            sim.start(product.worker(name, runtime.endpoint, env, sim.logdir))
        bus = stack.enter_context(NatsBus(NatsSettings(url=nats.url)))
        reports: queue.Queue[PullResult] = queue.Queue()
        bus.subscribe(f"{PULL_EVENTS}.>", lambda _s, data: reports.put(PullResult.from_json(data)))
        port = start_watcher(sim)
        image = push_image(registry.host, f"e2e/kubelet-{suffix}", "v1", size_mib=20).ref
        client.AppsV1Api(sim.api).create_namespaced_deployment(
            "default", deployment(f"web-{suffix}", image)
        )
        pulled = _pull_seconds(reports, image, len(names), sim)
        yield HitsCluster(sim, port, names, image, pulled)


def _pull_seconds(
    reports: queue.Queue[PullResult], image: str, nodes: int, sim: SimCluster
) -> list[float]:
    """The pull times the workers reported for ``image``, one per node, as the watcher got
    them (the same NATS subject)."""
    seconds: dict[str, float] = {}

    def all_pulled() -> bool:
        while not reports.empty():
            result = reports.get()
            if result.image == image and result.outcome == Outcome.PULLED:
                seconds[result.node] = result.seconds
        return len(seconds) == nodes

    wait_for(all_pulled, 120, "the workers to pull the catalog image", sim)
    assert all(image in probe.tags() for probe in sim.probes.values())  # read through CRI
    return list(seconds.values())


def now(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_kubelet_events_of_every_version_and_api_give_the_right_counts_and_seconds(
    hits: HitsCluster,
) -> None:
    a, b = hits.nodes
    image, other = hits.image, f"{hits.image.rsplit('/', 1)[0]}/not-warmed:v9"
    core = client.CoreV1Api(hits.sim.api)
    events = client.EventsV1Api(hits.sim.api)

    def feed(name: str, node_name: str, message: str, api: str = "core/v1", count: int = 1) -> None:
        body = kubelet_event(
            name, node_name, message, pod_name=f"pod-{name}", at=now(), count=count, api=api
        )
        if api == "core/v1":
            core.create_namespaced_event("default", body)
        else:
            events.create_namespaced_event("default", body, _preload_content=False)

    # node a, core/v1: a 1.33+ hit; a pre-1.33 hit repeated twice more; a 1.30+ miss; a miss
    # as kubelets before 1.20 wrote it (no duration)
    feed("h1", a, HIT_133.format(image))
    feed("h2", a, HIT.format(image))
    feed("m1", a, MISS_130.format(image, "1.5s", "2.25s"))
    feed("m2", a, MISS_119.format(image))
    # node b: events.k8s.io/v1 with a 1.25-1.29 miss in minutes and a hit seen twice (series);
    # core/v1 with a 1.20-1.24 miss
    feed("m3", b, MISS_125.format(image, "1m2.5s", "1m3s"), "events.k8s.io/v1")
    feed("h3", b, HIT.format(image), "events.k8s.io/v1", count=2)
    feed("m4", b, MISS_120.format(image, "3.2s"))
    # not in the catalog: counted apart
    feed("o1", a, MISS_130.format(other, "512ms", "700ms"))
    feed("o2", b, HIT.format(other), "events.k8s.io/v1")
    # not image decisions: other reasons, which the watch's field selector leaves out
    for name, reason, message in [
        ("p1", "Pulling", f'Pulling image "{image}"'),
        ("s1", "Started", "Started container main"),
    ]:
        body = kubelet_event(name, a, message, pod_name=f"pod-{name}", at=now(), reason=reason)
        core.create_namespaced_event("default", body)
    # the kubelet's correlator saw h2 twice more: its count goes to 3
    core.patch_namespaced_event("h2", "default", {"count": 3, "lastTimestamp": now(1)})

    expected_hits, expected_misses, waited = 1 + 3 + 2, 4, 2.25 + 0 + 63 + 3.2

    def published() -> bool:
        kubelet = hits.status()["kubelet"]
        return (kubelet["hits"], kubelet["misses"], kubelet["not_in_catalog"]["misses"]) == (
            expected_hits,
            expected_misses,
            1,
        )

    wait_for(published, 60, "the watcher to publish the kubelet's counts", hits.sim)
    _check(hits, expected_hits, expected_misses, waited)

    # A re-list (the watches end and the API answers 410 Gone) reads every Event again, and
    # counts none of them twice.
    relists = hits.metric("warm_watcher_relists_total", kind="Event")
    hits.sim.kube.expire_next_watches(20)  # every watch of the watcher: 9 kinds
    hits.sim.kube.kick()
    wait_for(
        lambda: hits.metric("warm_watcher_relists_total", kind="Event") > relists,
        60,
        "the Events watch to list again",
        hits.sim,
    )
    assert hits.metric("warm_watcher_kubelet_events_total", outcome="repeat") >= 9
    _check(hits, expected_hits, expected_misses, waited)


def _check(hits: HitsCluster, expected_hits: int, expected_misses: int, waited: float) -> None:
    a, b = hits.nodes
    status = hits.status()
    by_node = {entry["node"]: entry["kubelet"] for entry in status["nodes"]}
    assert by_node[a] == {"hits": 4, "misses": 2, "seconds_waited": 2.25}
    assert by_node[b] == {"hits": 2, "misses": 2, "seconds_waited": pytest.approx(66.2)}
    kubelet = status["kubelet"]
    assert kubelet["ratio"] == pytest.approx(0.6)
    assert kubelet["seconds_waited"] == pytest.approx(waited)
    # each hit saved the image's pull time as the workers measured it
    low, high = min(hits.pull_seconds), max(hits.pull_seconds)
    assert expected_hits * low - 0.01 <= kubelet["seconds_saved"] <= expected_hits * high + 0.01
    (lost,) = kubelet["top_lost"]
    assert (lost["image"], lost["misses"]) == (hits.image, expected_misses)
    assert kubelet["classes"] == {
        "pool-0": {"hits": 4, "misses": 2, "seconds_waited": 2.25},
        "pool-1": {"hits": 2, "misses": 2, "seconds_waited": pytest.approx(66.2)},
    }
    apart = kubelet["not_in_catalog"]
    assert (apart["hits"], apart["misses"], apart["seconds_waited"]) == (1, 1, 0.7)

    table = hits.sim.cli("warm-status")
    print(f"\n{table.stdout}")
    assert "warm-hit ratio 60.0% (6 hits, 4 cold pulls)" in table.stdout
    assert f"pods waited {waited:.1f}s on cold pulls" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.startswith(a))
    assert row.endswith("4/6 (67%)")
    lost_row = next(line for line in table.stdout.splitlines() if line.startswith(hits.image))
    assert lost_row.split()[1:] == [str(expected_misses), f"{waited:.1f}s"]

    image, metric = hits.image, hits.metric
    assert metric("warm_watcher_kubelet_pulls_total", image=image, result="hit") == 6
    assert metric("warm_watcher_kubelet_pulls_total", image=image, result="miss") == 4
    assert metric("warm_watcher_kubelet_class_pulls_total", node_class="pool-1", result="miss") == 2
    assert metric("warm_watcher_kubelet_class_pulls_total", node_class="pool-0", result="hit") == 4
    assert metric("warm_watcher_kubelet_wait_seconds_total", image=image) == pytest.approx(waited)
    saved = metric("warm_watcher_kubelet_saved_seconds_total", image=image)
    assert saved == pytest.approx(kubelet["seconds_saved"], abs=0.01)
    assert metric("warm_watcher_kubelet_uncataloged_pulls_total", result="miss") == 1
    assert metric("warm_watcher_kubelet_uncataloged_wait_seconds_total") == pytest.approx(0.7)
