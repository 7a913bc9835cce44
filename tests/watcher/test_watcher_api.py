"""The watcher through its real interface: the API double over HTTP in, NATS KV and Redis out."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY
from watcher_testing import WatchedCluster, create, node, uid, wait_for, workload

from localcluster.ports import free_port
from tasks.bus import NatsBus
from tasks.names import INVALID_IMAGE_EVENTS, PULL_IMAGE, REWARM_NODE
from tasks.settings import ExplicitImage

Start = Callable[..., WatchedCluster]
KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")


def ref(name: str) -> str:
    return f"registry.test/{name}:1"


def test_every_kind_init_containers_and_replicas_zero_reach_the_catalog(
    start_watcher: Start,
) -> None:
    tag = uid()
    cluster = start_watcher(nodes=[node(f"n-{tag}")])
    for kind in KINDS:
        create(cluster.api, workload(kind, f"{kind.lower()}-{tag}", ref(f"{kind.lower()}-{tag}")))
    pod: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"bare-{tag}", "namespace": "default"},
        "spec": {
            "initContainers": [{"name": "init", "image": ref(f"init-{tag}")}],
            "containers": [{"name": "main", "image": ref(f"main-{tag}")}],
            "ephemeralContainers": [{"name": "debug", "image": ref(f"debug-{tag}")}],
        },
    }
    cluster.core.create_namespaced_pod("default", pod)
    expected = {ref(f"{kind.lower()}-{tag}") for kind in KINDS} | {
        ref(f"init-{tag}"),
        ref(f"main-{tag}"),
    }
    wait_for(lambda: expected <= set(cluster.entries()), what="every kind in the catalog")
    entries = cluster.entries()
    assert ref(f"debug-{tag}") not in entries
    assert entries[ref(f"cronjob-{tag}")].workloads == (f"default/CronJob/cronjob-{tag}",)
    assert entries[ref(f"init-{tag}")].target == ("any node",)
    wait_for(lambda: cluster.slice_images(f"n-{tag}") == expected, what="the node's slice")


def test_owned_objects_make_one_user_and_only_new_pairs_become_pulls(
    start_watcher: Start,
) -> None:
    tag = uid()
    name = f"n-{tag}"
    cluster = start_watcher(nodes=[node(name)])
    wait_for(lambda: cluster.slice_images(name) is not None, what="the first sync")
    wait_for(lambda: cluster.tasks(name), what="the joining node's re-warm")
    cluster.broker.delete(f"warm.node.{name}")
    image = ref(f"web-{tag}")
    create(cluster.api, workload("Deployment", f"web-{tag}", image))
    replica_set = workload("ReplicaSet", f"web-{tag}-1", image)
    replica_set["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"web-{tag}", "uid": "u1"}
    ]
    create(cluster.api, replica_set)
    wait_for(lambda: image in cluster.entries(), what="the Deployment's image")
    entry = cluster.entries()[image]
    assert entry.workloads == (f"default/Deployment/web-{tag}",)
    assert entry.workload_count == 1
    wait_for(lambda: cluster.tasks(name), what="a pull task")
    # A second user of the same image is no new (node, image) pair: no second pull.
    create(cluster.api, workload("StatefulSet", f"db-{tag}", image))
    wait_for(lambda: cluster.entries()[image].workload_count == 2, what="the second user")
    assert cluster.tasks(name) == [(PULL_IMAGE, {"node": name, "image": image})]


def test_namespace_and_annotation_filters_and_image_patterns(start_watcher: Start) -> None:
    tag = uid()
    cluster = start_watcher(
        nodes=[node(f"n-{tag}")],
        ignore_namespaces=("kube-system",),
        namespace_selector="warm!=off",
        exclude_images=("registry.test/excluded-*",),
    )
    for name, labels in ((f"on-{tag}", {}), (f"off-{tag}", {"warm": "off"}), ("kube-system", {})):
        namespace: Any = {"metadata": {"name": name, "labels": labels}}
        cluster.core.create_namespace(namespace)
    create(cluster.api, workload("Deployment", "kept", ref(f"kept-{tag}"), namespace=f"on-{tag}"))
    create(cluster.api, workload("Deployment", "x", ref(f"off-ns-{tag}"), namespace=f"off-{tag}"))
    create(cluster.api, workload("Deployment", "s", ref(f"system-{tag}"), namespace="kube-system"))
    out = {"warm-images.io/warm": "false"}
    create(
        cluster.api,
        workload("Deployment", "o", ref(f"optout-{tag}"), namespace=f"on-{tag}", annotations=out),
    )
    create(cluster.api, workload("Deployment", "e", ref(f"excluded-{tag}"), namespace=f"on-{tag}"))
    wait_for(lambda: ref(f"kept-{tag}") in cluster.entries(), what="the selected workload")
    assert set(cluster.entries()) == {ref(f"kept-{tag}")}
    # Relabelling a namespace brings its workloads in.
    cluster.core.patch_namespace(f"off-{tag}", {"metadata": {"labels": {"warm": "on"}}})
    wait_for(lambda: ref(f"off-ns-{tag}") in cluster.entries(), what="the relabelled namespace")


def test_targeting_and_nodes_joining_changing_and_leaving(start_watcher: Start) -> None:
    tag = uid()
    amd, arm, gpu = f"amd-{tag}", f"arm-{tag}", f"gpu-{tag}"
    taint = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    agent = ref(f"agent-{tag}")  # explicit: no workload uses it yet
    cluster = start_watcher(
        nodes=[
            node(amd, {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}),
            node(arm, {"kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux"}),
            node(gpu, {"kubernetes.io/arch": "amd64", "cores": "64"}, taint),
        ],
        explicit=(ExplicitImage(agent, (("kubernetes.io/arch", "arm64"),)),),
    )
    anywhere, arm_only = ref(f"any-{tag}"), ref(f"arm-{tag}")
    big, on_gpu = ref(f"big-{tag}"), ref(f"gpu-{tag}")
    create(cluster.api, workload("Deployment", "any", anywhere))
    create(
        cluster.api,
        workload("DaemonSet", "arm", arm_only, nodeSelector={"kubernetes.io/arch": "arm64"}),
    )
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["32"]}]}
                ]
            }
        }
    }
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]
    create(cluster.api, workload("StatefulSet", "big", big, affinity=affinity))
    create(cluster.api, workload("Job", "train", on_gpu, tolerations=tolerations))
    expected = {amd: {anywhere, on_gpu}, arm: {anywhere, arm_only, on_gpu, agent}, gpu: {on_gpu}}

    def slices() -> dict[str, set[str] | None]:
        return {name: cluster.slice_images(name) for name in expected}

    wait_for(lambda: slices() == expected, what=f"slices {expected}, have {slices()}")
    # Entries are written just after the slices (nodes first): wait for them as well.
    entries = wait_for(
        lambda: (found := cluster.entries()) and {arm_only, big, agent} <= found.keys() and found,
        what="the catalog entries",
    )
    assert entries[arm_only].target_nodes == 1
    assert entries[big].target_nodes == 0  # tolerates no taint: not on the gpu node
    assert entries[agent].workloads == ("explicit (WARM_EXPLICIT_IMAGES)",)

    joined = f"arm2-{tag}"
    cluster.broker.delete(f"warm.node.{arm}")
    cluster.core.create_node(node(joined, {"kubernetes.io/arch": "arm64"}))
    wait_for(lambda: cluster.slice_images(joined) == expected[arm], what="the joining node")
    (task, kwargs), *more = wait_for(lambda: cluster.tasks(joined), what="its re-warm")
    assert (task, kwargs["node"], more) == (REWARM_NODE, joined, [])  # its whole slice at once
    assert cluster.tasks(arm) == []  # nothing new for the nodes already there

    cluster.broker.delete(f"warm.node.{gpu}")
    cluster.core.patch_node(gpu, {"spec": {"taints": []}})
    wait_for(
        lambda: cluster.slice_images(gpu) == {anywhere, on_gpu, big}, what="the untainted node"
    )
    pulls = wait_for(lambda: len(cluster.tasks(gpu)) == 2 and cluster.tasks(gpu), what="pulls")
    assert {(task, kwargs["image"]) for task, kwargs in pulls} == {
        (PULL_IMAGE, anywhere),
        (PULL_IMAGE, big),
    }

    cluster.core.delete_node(amd)
    wait_for(lambda: cluster.slice_images(amd) is None, what="the slice of the node that left")
    wait_for(lambda: not cluster.broker.exists(f"warm.node.{amd}"), what="its queue deleted")


def test_a_410_in_the_middle_of_watches_misses_no_workload(start_watcher: Start) -> None:
    tag = uid()
    cluster = start_watcher(nodes=[node(f"n-{tag}")])
    wait_for(lambda: cluster.slice_images(f"n-{tag}") is not None, what="the first sync")
    lists_before = relists("Deployment")
    images = []
    for round_ in range(6):
        if round_ == 1:
            cluster.kube.compact()  # history gone: resuming watches get 410 Gone
            cluster.kube.kick()
        if round_ == 3:
            cluster.kube.expire_next_watches(20)
            cluster.kube.kick()
        if round_ == 5:
            cluster.kube.kick()  # an apiserver restart
        for kind in ("Deployment", "CronJob", "Pod"):
            image = ref(f"{kind.lower()}-{round_}-{tag}")
            images.append(image)
            if kind == "Pod":
                pod: Any = {
                    "metadata": {"name": f"p-{round_}-{tag}"},
                    "spec": {"containers": [{"name": "c", "image": image}]},
                }
                cluster.core.create_namespaced_pod("default", pod)
            else:
                create(cluster.api, workload(kind, f"{kind.lower()}-{round_}", image))
    wait_for(lambda: set(images) <= set(cluster.entries()), 40, "every workload after 410s")
    assert relists("Deployment") >= lists_before + 2  # each 410 led to a fresh list
    assert all(r.alive() for r in cluster.watcher.reflectors)


def relists(kind: str) -> float:
    return REGISTRY.get_sample_value("warm_watcher_relists_total", {"kind": kind}) or 0.0


def test_a_malformed_reference_is_reported_and_others_proceed(start_watcher: Start) -> None:
    tag = uid()
    cluster = start_watcher(nodes=[node(f"n-{tag}")])
    body = workload("Deployment", f"mixed-{tag}", ref(f"good-{tag}"))
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "bad", "image": "Bad:Ref:!"}]
    body["spec"]["template"]["spec"]["unknownField"] = {"ignored": True}
    body["spec"]["template"]["spec"]["containers"].append({"name": "odd", "image": 42})
    post_raw(cluster, "/apis/apps/v1/namespaces/default/deployments", body)
    create(cluster.api, workload("Deployment", f"other-{tag}", ref(f"other-{tag}")))
    wait_for(
        lambda: {ref(f"good-{tag}"), ref(f"other-{tag}")} <= set(cluster.entries()),
        what="the valid images",
    )
    invalid = wait_for(
        lambda: [e for s, e in cluster.events if s == INVALID_IMAGE_EVENTS],
        what="the invalid-image event",
    )
    assert invalid[0]["workload"] == f"default/Deployment/mixed-{tag}"
    assert invalid[0]["reference"] == "Bad:Ref:!"


def post_raw(cluster: WatchedCluster, path: str, body: Any) -> None:
    """POST JSON as is: the typed client refuses the unknown fields an API may well send."""
    request = urllib.request.Request(
        cluster.kube.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status in (200, 201)


def test_health_turns_unhealthy_when_the_watch_goes_stale(start_watcher: Start) -> None:
    port = free_port()
    cluster = start_watcher(nodes=[node(f"n-{uid()}")], health_port=port, stale_after=3.0)

    def status() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return 0, {}

    wait_for(lambda: status()[0] == 200, what="a healthy watcher")
    # The failure naive watchers hide: connections stay open, but nothing arrives any more.
    cluster.kube.call(lambda emulator: setattr(emulator, "bookmark_interval", 3600))
    _, details = wait_for(
        lambda: (s := status())[0] == 503 and "Pod" in s[1]["stale_watches"] and s,
        30,
        "the Pod watch reported stale",
    )
    assert not details["healthy"]
    cluster.kube.call(lambda emulator: setattr(emulator, "bookmark_interval", 0.5))
    cluster.kube.kick()  # the watches end; the watcher resumes them and is heard from again
    wait_for(lambda: status()[0] == 200, what="a healthy watcher again")


def test_an_unused_image_leaves_after_the_grace_period(start_watcher: Start) -> None:
    tag = uid()
    name = f"n-{tag}"
    cluster = start_watcher(nodes=[node(name)], catalog_grace_period=2.0)
    image = ref(f"brief-{tag}")
    create(cluster.api, workload("Deployment", f"brief-{tag}", image))
    wait_for(lambda: image in (cluster.slice_images(name) or ()), what="the image in the slice")
    cluster.apps.delete_namespaced_deployment(f"brief-{tag}", "default")
    wait_for(lambda: cluster.entries()[image].workload_count == 0, what="the entry without users")
    assert image in (cluster.slice_images(name) or ())  # still warm during the grace period
    wait_for(lambda: image not in cluster.entries(), what="the entry gone after the grace period")
    assert image not in (cluster.slice_images(name) or ())


def test_a_periodic_resync_heals_a_catalog_that_lost_its_keys(start_watcher: Start) -> None:
    tag = uid()
    name = f"n-{tag}"
    cluster = start_watcher(nodes=[node(name)], resync_interval=2.0)
    image = ref(f"kept-{tag}")
    create(cluster.api, workload("Deployment", f"kept-{tag}", image))
    wait_for(lambda: image in (cluster.slice_images(name) or ()), what="the image in the slice")
    cluster.catalog.delete_slice(name)  # as if NATS had lost its data
    cluster.catalog.delete_entry(image)
    wait_for(lambda: image in (cluster.slice_images(name) or ()), what="the slice rewritten")
    wait_for(lambda: image in cluster.entries(), what="the entry rewritten")


def test_a_list_of_namespaces_is_watched_namespace_by_namespace(start_watcher: Start) -> None:
    tag = uid()
    cluster = start_watcher(nodes=[node(f"n-{tag}")], namespaces=(f"a-{tag}", f"b-{tag}"))
    assert {r.name for r in cluster.watcher.reflectors} >= {f"Pod in a-{tag}", f"Job in b-{tag}"}
    for namespace in (f"a-{tag}", f"b-{tag}", f"c-{tag}"):
        image = ref(f"{namespace}")
        create(cluster.api, workload("CronJob", "nightly", image, namespace=namespace))
    wanted = {ref(f"a-{tag}"), ref(f"b-{tag}")}
    wait_for(lambda: wanted <= set(cluster.entries()), what="the listed namespaces' images")
    assert ref(f"c-{tag}") not in cluster.entries()


def test_opt_in_mode_counts_only_annotated_workloads(start_watcher: Start) -> None:
    tag = uid()
    cluster = start_watcher(nodes=[node(f"n-{tag}")], opt_in=True)
    chosen = {"warm-images.io/warm": "true"}
    create(cluster.api, workload("Deployment", "in", ref(f"in-{tag}"), annotations=chosen))
    create(cluster.api, workload("Deployment", "plain", ref(f"plain-{tag}")))
    wait_for(lambda: ref(f"in-{tag}") in cluster.entries(), what="the annotated workload")
    assert ref(f"plain-{tag}") not in cluster.entries()


def test_nodes_of_one_class_share_one_slice_and_a_slice_nobody_names_is_deleted(
    start_watcher: Start, bus: NatsBus
) -> None:
    tag = uid()
    names = [f"n-{tag}-{i}" for i in range(3)]
    first, second = ref(f"first-{tag}"), ref(f"second-{tag}")
    cluster = start_watcher(
        nodes=[node(name) for name in names],
        objects=[workload("Deployment", f"first-{tag}", first)],  # in use: sent to all at once
    )
    wait_for(lambda: all(cluster.slice_images(n) == {first} for n in names), what="the slices")
    (shared,) = {cluster.catalog.get_pointer(name)[0].slice for name in names}
    assert shared in cluster.catalog.class_slices()

    create(cluster.api, workload("Deployment", f"second-{tag}", second))
    wait_for(lambda: cluster.catalog.waves().get(second), what="the new image's wave")
    cluster.pass_canaries(bus, second)  # a canary holds it: the wave reaches the third node
    wait_for(lambda: all(cluster.slice_images(n) == {first, second} for n in names), what="growth")
    (grown,) = {cluster.catalog.get_pointer(name)[0].slice for name in names}
    assert grown != shared
    wait_for(lambda: shared not in cluster.catalog.class_slices(), what="the old slice deleted")
    assert grown in cluster.catalog.class_slices()
