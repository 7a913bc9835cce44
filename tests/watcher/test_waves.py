"""Waves against the API double over real HTTP, with real NATS and Redis: a new image or digest
reaches its canaries first, the rest once a canary holds it, and a canary's permanent failure
stops the wave, held from the other nodes, with an Event on the workload.

The nodes' workers are played as a worker plays them: a pull result published on the node's
pull events subject (:func:`report`), or a status record written through
:class:`StatusStore` (what a re-warm writes); real pulls are in tests/e2e/test_waves_e2e.py.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from kubernetes import client
from prometheus_client import REGISTRY
from watcher_testing import (
    WatchedCluster,
    create,
    node,
    uid,
    wait_for,
    watcher_settings,
    workload,
)

from localcluster.images import push_image
from localcluster.registry import Registry
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import wave_key
from tasks.errors import GAVE_UP
from tasks.models import Outcome, PullResult, Wave, WaveState
from tasks.names import CATALOG_BUCKET, PULL_IMAGE, REWARM_NODE, pull_events_subject
from tasks.status import StatusStore
from watcher.dispatch import Sync
from watcher.service import Watcher
from watcher.waves import STOPPED_REASON

Start = Callable[..., WatchedCluster]


def ref(name: str) -> str:
    return f"registry.test/{name}:1"


def wave_of(cluster: WatchedCluster, image: str) -> Wave | None:
    return cluster.catalog.waves().get(image)


def held_from(cluster: WatchedCluster, name: str) -> tuple[str, ...]:
    return cluster.catalog.get_slice(name)[0].held


def pulls(cluster: WatchedCluster, name: str, image: str) -> list[dict[str, Any]]:
    return [kw for task, kw in cluster.tasks(name) if task == PULL_IMAGE and kw["image"] == image]


def report(bus: NatsBus, name: str, image: str, outcome: Outcome, **fields: Any) -> None:
    """What the node's worker publishes after a pull attempt."""
    bus.publish(pull_events_subject(name), PullResult(name, image, outcome, **fields).to_json())


def publishing(cluster: WatchedCluster, names: list[str]) -> None:
    """Until the watcher's first publish: what is created next is new to it (a wave)."""
    wait_for(lambda: all(cluster.slice_images(n) is not None for n in names), what="a publish")


def publishing_fleet(
    start_watcher: Start, tag: str, size: int, **options: Any
) -> tuple[WatchedCluster, list[str], str]:
    """``size`` nodes under a watcher that has published, and the image ``app-<tag>`` that is
    new to it."""
    names = [f"n-{tag}-{i}" for i in range(size)]
    cluster = start_watcher(nodes=[node(n) for n in names], **options)
    publishing(cluster, names)
    return cluster, names, ref(f"app-{tag}")


def rewarms_of(cluster: WatchedCluster, name: str) -> list[dict[str, Any]]:
    return [kw for task, kw in cluster.tasks(name) if task == REWARM_NODE]


def transitions(outcome: str) -> float:
    """The watcher's own counter (in this process's registry, as on its /metrics)."""
    value = REGISTRY.get_sample_value("warm_watcher_wave_transitions_total", {"outcome": outcome})
    return value or 0.0


def started_wave(cluster: WatchedCluster, image: str) -> Wave:
    found: Wave = wait_for(lambda: wave_of(cluster, image), what=f"the wave of {image}")
    return found


def test_a_new_image_reaches_canaries_spread_over_pools_first_then_every_node(
    start_watcher: Start, bus: NatsBus
) -> None:
    tag = uid()
    pools = {f"n-{tag}-{i}": "a" if i < 3 else "b" for i in range(6)}
    # A rule that reads the pool label splits the nodes into two classes; its image is in use
    # when the watcher starts: no wave for it.
    pinned = ref(f"pinned-{tag}")
    cluster = start_watcher(
        nodes=[node(n, labels={"pool": p}) for n, p in pools.items()],
        objects=[workload("Deployment", f"pinned-{tag}", pinned, nodeSelector={"pool": "a"})],
    )
    wait_for(lambda: pinned in cluster.entries(), what="the image in use at the start")
    image = ref(f"new-{tag}")
    released = transitions("released")
    create(cluster.api, workload("Deployment", f"new-{tag}", image))

    wave = started_wave(cluster, image)
    assert wave_of(cluster, pinned) is None
    assert all(pinned in (cluster.slice_images(n) or ()) for n, p in pools.items() if p == "a")
    assert wave.state is WaveState.CANARY and len(wave.canaries) == 2
    assert {pools[c] for c in wave.canaries} == {"a", "b"}  # one per pool
    others = sorted(set(pools) - set(wave.canaries))
    wait_for(lambda: all(image in (cluster.slice_images(c) or ()) for c in wave.canaries))
    for name in others:  # held: out of the slice, named as held, sent nothing
        assert image not in (cluster.slice_images(name) or ())
        assert held_from(cluster, name) == (image,)
        assert not pulls(cluster, name, image)
    wait_for(lambda: all(pulls(cluster, c, image) for c in wave.canaries), what="canary pulls")
    report(bus, wave.canaries[1], image, Outcome.RETRYING, reason="503")  # slow: no verdict
    for canary in wave.canaries:
        assert held_from(cluster, canary) == ()

    report(bus, wave.canaries[0], image, Outcome.PULLED)

    wait_for(lambda: wave_of(cluster, image) is None, what="the wave released")
    wait_for(lambda: all(image in (cluster.slice_images(n) or ()) for n in pools), what="fleet")
    wait_for(lambda: all(pulls(cluster, name, image) for name in others), what="the fleet's pulls")
    assert all(held_from(cluster, name) == () for name in pools)
    assert transitions("released") == released + 1


def test_a_canarys_permanent_failure_stops_the_wave_with_an_event_and_a_new_digest_restarts_it(
    start_watcher: Start, bus: NatsBus, registry: Registry
) -> None:
    tag = uid()
    names = [f"n-{tag}-{i}" for i in range(4)]
    cluster = start_watcher(nodes=[node(n) for n in names])
    publishing(cluster, names)
    broken = push_image(registry.host, f"waves/app-{tag}", "latest")
    create(cluster.api, workload("Deployment", f"app-{tag}", broken.ref, namespace="default"))
    wave = wait_for(
        lambda: (w := wave_of(cluster, broken.ref)) is not None and w.digest == broken.digest and w,
        what="the wave with its digest",
    )
    first, second = wave.canaries
    others = sorted(set(names) - set(wave.canaries))
    stops = transitions("stopped")

    # A canary that gave up after transient errors is a registry that was down: no verdict.
    report(bus, second, broken.ref, Outcome.FAILED, reason=f"{GAVE_UP} 6 attempts: 503")
    report(bus, first, broken.ref, Outcome.FAILED, reason="blob unknown: not found")

    stopped = wait_for(
        lambda: (w := wave_of(cluster, broken.ref)) and w.state is WaveState.STOPPED and w,
        what="the wave stopped",
    )
    assert (stopped.node, stopped.reason) == (first, "blob unknown: not found")
    assert transitions("stopped") == stops + 1
    assert REGISTRY.get_sample_value("warm_watcher_waves", {"state": "stopped"}) == 1
    assert all(held_from(cluster, name) == (broken.ref,) for name in others)
    assert not any(pulls(cluster, name, broken.ref) for name in others)
    uid_of = cluster.apps.read_namespaced_deployment(f"app-{tag}", "default").metadata.uid
    events = wait_for(lambda: stopped_events(cluster.api, f"app-{tag}"), what="the Event")
    (event,) = events
    assert event.type == "Warning" and event.involved_object.kind == "Deployment"
    assert event.involved_object.uid == uid_of
    assert first in event.message and "blob unknown" in event.message

    fixed = push_image(registry.host, f"waves/app-{tag}", "latest")
    cluster.watcher.digests.refresh()  # the next round now, not in WARM_REWARM_INTERVAL
    restarted = wait_for(
        lambda: (w := wave_of(cluster, broken.ref)) and w.digest == fixed.digest and w,
        what="a new wave for the new digest",
    )
    assert restarted.state is WaveState.CANARY and restarted.canaries == wave.canaries
    # A late result of the broken digest is no verdict on the fixed one.
    report(bus, second, broken.ref, Outcome.PULLED, digest=broken.digest)
    report(bus, second, broken.ref, Outcome.FAILED, reason="not found", digest=broken.digest)
    wait_for(lambda: any(pulls(cluster, c, broken.ref) for c in wave.canaries), what="re-pull")
    assert wave_of(cluster, broken.ref) == restarted
    report(bus, second, broken.ref, Outcome.PULLED, digest=fixed.digest)
    wait_for(lambda: wave_of(cluster, broken.ref) is None, what="the fixed image released")
    wait_for(lambda: all(pulls(cluster, name, broken.ref) for name in others), what="the fleet")


def stopped_events(api: client.ApiClient, name: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event("default").items
    return [e for e in listed if e.involved_object.name == name and e.reason == STOPPED_REASON]


def test_a_canary_that_leaves_is_replaced_and_a_status_record_answering_its_slice_releases(
    start_watcher: Start, bus: NatsBus
) -> None:
    tag = uid()
    cluster, names, image = publishing_fleet(start_watcher, tag, 4)
    create(cluster.api, workload("Deployment", f"app-{tag}", image))
    wave = started_wave(cluster, image)

    cluster.core.delete_node(wave.canaries[0])
    replaced = wait_for(
        lambda: (w := wave_of(cluster, image)) and w.canaries != wave.canaries and w,
        what="a new canary",
    )
    assert replaced.canaries[0] == wave.canaries[1] and len(replaced.canaries) == 2
    newcomer = replaced.canaries[1]
    wait_for(lambda: image in (cluster.slice_images(newcomer) or ()), what="the newcomer's slice")
    wait_for(lambda: pulls(cluster, newcomer, image), what="the newcomer's pull")

    # A re-warm on the newcomer: its record answers its slice, the image not named (warm).
    # This is what a leader that missed the pull events reads.
    node_slice, revision = cluster.catalog.get_slice(newcomer)
    expected = [item.image for item in node_slice.images]
    StatusStore(bus).record_rewarm(newcomer, expected, revision, expected, node_slice.slice)

    wait_for(lambda: wave_of(cluster, image) is None, what="the wave released")
    rest = set(names) - {wave.canaries[0], *replaced.canaries}
    wait_for(lambda: all(image in (cluster.slice_images(n) or ()) for n in rest), what="the rest")


def test_zero_canaries_turn_waves_off(
    start_watcher: Start,
) -> None:
    tag = uid()
    cluster, names, image = publishing_fleet(start_watcher, tag, 3, canary_nodes=0)
    create(cluster.api, workload("Deployment", f"app-{tag}", image))

    wait_for(lambda: all(pulls(cluster, n, image) for n in names), what="every node's pull")
    assert wave_of(cluster, image) is None
    assert all(held_from(cluster, n) == () for n in names)


def test_a_stopped_wave_outlives_a_full_sync_that_finds_it_gone_from_nats(
    start_watcher: Start, bus: NatsBus
) -> None:
    tag = uid()
    cluster, names, image = publishing_fleet(start_watcher, tag, 3)
    create(cluster.api, workload("Deployment", f"app-{tag}", image))
    wave = started_wave(cluster, image)
    report(bus, wave.canaries[0], image, Outcome.FAILED, reason="manifest unknown")
    stopped = wait_for(
        lambda: (w := wave_of(cluster, image)) and w.state is WaveState.STOPPED and w,
        what="the wave stopped",
    )
    (other,) = set(names) - set(wave.canaries)
    rewarms = len(rewarms_of(cluster, other))

    bus.kv_delete(CATALOG_BUCKET, wave_key(image))  # NATS lost it (a restart without storage)
    cluster.watcher.dispatcher.owe(Sync.FULL)  # what the catalog guard then asks for

    wait_for(lambda: wave_of(cluster, image) == stopped, what="the wave stored again")
    wait_for(lambda: len(rewarms_of(cluster, other)) > rewarms, what="the full sync's re-warm")
    assert held_from(cluster, other) == (image,)
    assert not pulls(cluster, other, image)


def test_canaries_are_nodes_whose_worker_answers_its_slice_before_any_other(
    start_watcher: Start, bus: NatsBus
) -> None:
    tag = uid()
    cluster, names, image = publishing_fleet(start_watcher, tag, 6)
    # The two nodes the hash order puts last answer their slices (their workers re-warmed);
    # the others never reported.
    by_hash = sorted(names, key=lambda n: hashlib.sha256(f"{image}\0{n}".encode()).digest())
    for name in by_hash[-2:]:
        node_slice, revision = cluster.catalog.get_slice(name)
        StatusStore(bus).record_rewarm(name, [], revision, [], node_slice.slice)

    create(cluster.api, workload("Deployment", f"app-{tag}", image))

    wave = started_wave(cluster, image)
    assert sorted(wave.canaries) == sorted(by_hash[-2:])


def test_a_leader_that_takes_over_carries_the_wave_on(
    start_watcher: Start, bus: NatsBus, nats_server: NatsServer, redis_server: RedisServer
) -> None:
    tag = uid()
    cluster, names, image = publishing_fleet(start_watcher, tag, 3)
    create(cluster.api, workload("Deployment", f"app-{tag}", image))
    wave = started_wave(cluster, image)
    (other,) = set(names) - set(wave.canaries)
    cluster.stop.set()  # the leader goes; its wave stays in NATS
    cluster.thread.join(timeout=15)

    settings = watcher_settings(nats_server, redis_server)
    app = Celery("watcher-tests-successor")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = settings.broker.url
    stop = threading.Event()
    with NatsBus(settings.nats) as own_bus:
        successor = Watcher(settings, cluster.kube.api_client(), app, own_bus, identity=uid())
        thread = threading.Thread(target=successor.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: successor.dispatcher.revision > 0, what="the successor's first sync")
            assert wave_of(cluster, image) == wave  # the image in use is no news to it: same wave
            assert held_from(cluster, other) == (image,)

            report(bus, wave.canaries[0], image, Outcome.PULLED)

            wait_for(lambda: wave_of(cluster, image) is None, what="the successor's release")
            wait_for(lambda: image in (cluster.slice_images(other) or ()), what="the last node")
        finally:
            stop.set()
            thread.join(timeout=15)
