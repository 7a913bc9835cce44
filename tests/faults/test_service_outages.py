"""NATS, the registry and the Kubernetes API misbehaving under a running system."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from celery import Celery
from cluster import WARM_TIMEOUT, drill_cluster, wait_for
from drills import Drill

from localcluster import Registry, push_image
from localcluster.kubeapi import RVEmulator
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import Outcome
from tasks.names import PULL_IMAGE
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, load_settings


def test_nats_down_pulls_continue_and_every_component_reconnects(
    drill: Drill, workdir: Path, registry: Registry
) -> None:
    """NATS stopped and restarted: pulls go on, the watcher and worker reconnect."""
    first, during, after = (
        push_image(registry.host, f"fn/{name}-{uuid.uuid4().hex[:6]}", "v1", size_mib=5)
        for name in ("first", "during", "after")
    )
    with drill_cluster(workdir, [registry.host]) as cluster:
        cluster.deploy("first", first.ref)
        cluster.wait_warm(first.ref)

        cluster.nats.stop()
        celery = Celery("drill", broker=f"{cluster.redis.url}/0")
        celery.send_task(
            PULL_IMAGE,
            kwargs={"node": cluster.node, "image": during.ref},
            queue=queue_for_node(cluster.node),
        )
        pulled_while_down = cluster.wait_warm(during.ref)
        cluster.deploy("after", after.ref)  # the watcher cannot publish it while NATS is down
        time.sleep(2)

        cluster.nats.start()
        back = time.monotonic()
        cluster.wait_warm(after.ref)
        warm_after_back = time.monotonic() - back
        with NatsBus(NatsSettings(url=cluster.nats.url)) as bus:
            catalog = {entry.image for entry in CatalogStore(bus).entries()}
        reported = wait_for(
            lambda: bool(cluster.events.of(after.ref)),
            WARM_TIMEOUT,
            "the worker's report after NATS came back",
            cluster.logs,
        )
        celery.close()
    assert {first.ref, after.ref} <= catalog
    drill.record("pull sent while NATS was down, warm after", f"{pulled_while_down:.1f} s")
    drill.record(
        "Deployment created while NATS was down, warm after NATS came back",
        f"{warm_after_back:.1f} s",
    )
    drill.record("worker's pull event seen on the restarted NATS after", f"{reported:.1f} s")


def test_registry_down_for_a_while_bounded_retries_then_warm(drill: Drill, workdir: Path) -> None:
    """The registry down for a while, then back: bounded retries, then warm."""
    with Registry(workdir / f"flaky-{uuid.uuid4().hex[:4]}") as flaky:
        image = push_image(flaky.host, "fr/app", "v1", size_mib=5)
        flaky.pause()
        with drill_cluster(workdir, [flaky.host]) as cluster:
            cluster.deploy("app", image.ref)
            wait_for(
                lambda: any(e.outcome is Outcome.RETRYING for e in cluster.events.of(image.ref)),
                WARM_TIMEOUT,
                "a transient failure",
                cluster.logs,
            )
            down_for = 8.0
            time.sleep(down_for)
            flaky.resume()
            back = time.monotonic()
            cluster.wait_warm(image.ref)
            warm_after = time.monotonic() - back
            attempts = len(cluster.events.of(image.ref))
    # The first re-warm and the pull task may each start a chain of at most 1 + max_retries
    # attempts, exponentially spaced; a storm (no backoff) would make hundreds in the same time.
    retries = load_settings({}).runtime.max_retries
    bound = 2 * (1 + retries)
    assert attempts <= bound, f"{attempts} attempts in {down_for:.0f}s is a retry storm"
    drill.record("settings changed from the defaults", cluster.settings)
    drill.record("registry down for", f"{down_for:.0f} s (+ the time to the first failure)")
    drill.record(f"pull attempts in all (default backoff, at most {bound})", attempts)
    drill.record("warm after the registry came back", f"{warm_after:.1f} s")


def test_api_gone_and_dropped_watches_miss_no_workload(
    drill: Drill, workdir: Path, registry: Registry
) -> None:
    """The API double answering 410 Gone and dropping watches: no workload missed."""
    rounds = 30
    tag = uuid.uuid4().hex[:6]
    refs = [f"{registry.host}/fa/{tag}-{i}:v1" for i in range(rounds)]
    with drill_cluster(workdir, [registry.host]) as cluster:
        wait_for(lambda: cluster.kube.call(_watched), WARM_TIMEOUT, "the watcher's watches")
        for index, ref in enumerate(refs):
            cluster.deploy(f"app-{index}", ref)
            if index % 3 == 0:
                cluster.kube.compact()  # watches from an older resourceVersion get 410
            if index % 4 == 0:
                cluster.kube.kick()  # every open watch is dropped
            if index % 10 == 0:
                cluster.kube.expire_next_watches(2)
            time.sleep(0.05)

        def catalog_images() -> set[str]:
            with NatsBus(NatsSettings(url=cluster.nats.url)) as bus:
                return {entry.image for entry in CatalogStore(bus).entries()}

        settled = wait_for(
            lambda: set(refs) <= catalog_images(),
            WARM_TIMEOUT,
            "every Deployment in the catalog",
            cluster.logs,
        )
        catalog = catalog_images()
        served = cluster.kube.served()
    gone, dropped = served.get("410 Gone", 0), served.get("watch dropped", 0)
    assert gone and dropped, f"the API double served no 410 or dropped no watch: {served}"
    found = len(set(refs) & catalog)
    drill.record("Deployments created while watches were expired and dropped", rounds)
    drill.record("410 Gone answers the API double served (its own count)", gone)
    drill.record("watches the API double dropped (its own count)", dropped)
    drill.record("Deployments in the catalog", f"{found}/{rounds}, {settled:.1f} s after the last")


def _watched(emulator: RVEmulator) -> bool:
    return bool(emulator.live)
