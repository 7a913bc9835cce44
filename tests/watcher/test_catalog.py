"""Summaries, the in-memory catalog and per-class slices, without any service."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tasks.models import ClassSlice
from tasks.settings import ExplicitImage, WatchSettings
from watcher.catalog import CatalogState
from watcher.reflector import Changed, Listed
from watcher.slices import SliceIndex
from watcher.targeting import node_facts
from watcher.workloads import Summarizer

NGINX = "docker.io/library/nginx:1.25"


def template(image: str, **spec: Any) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [{"name": "c", "image": image}], **spec}}}


def workload(kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", **meta}, "spec": spec}


def test_every_kind_reads_its_pod_template() -> None:
    summarize = Summarizer(WatchSettings())
    for kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
        summary = summarize.workload(kind, workload(kind, "w", {"replicas": 0, **template("a")}))
        assert summary is not None and summary.images == {"docker.io/library/a:latest"}, kind
    cron = workload("CronJob", "c", {"jobTemplate": {"spec": template("b:1")}})
    summary = summarize.workload("CronJob", cron)
    assert summary is not None and summary.images == {"docker.io/library/b:1"}


def test_init_containers_count_and_ephemeral_containers_do_not() -> None:
    pod = workload(
        "Pod",
        "p",
        {
            "initContainers": [{"name": "i", "image": "init:1"}],
            "containers": [{"name": "c", "image": "nginx:1.25"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "imagePullSecrets": [{"name": "regcred"}],
        },
    )
    summary = Summarizer(WatchSettings()).workload("Pod", pod)
    assert summary is not None
    assert summary.images == {NGINX, "docker.io/library/init:1"}
    assert summary.pull_secrets == ("default/regcred",)


def test_owned_objects_are_counted_through_their_owner() -> None:
    summarize = Summarizer(WatchSettings())
    owned_pod = workload(
        "Pod", "p", {"containers": [{"image": "a"}]}, ownerReferences=[{"kind": "ReplicaSet"}]
    )
    owned_rs = workload("ReplicaSet", "r", template("a"), ownerReferences=[{"kind": "Deployment"}])
    owned_job = workload("Job", "j", template("a"), ownerReferences=[{"kind": "CronJob"}])
    foreign = workload(
        "Pod", "q", {"containers": [{"image": "a"}]}, ownerReferences=[{"kind": "Workflow"}]
    )
    assert summarize.workload("Pod", owned_pod) is None
    assert summarize.workload("ReplicaSet", owned_rs) is None
    assert summarize.workload("Job", owned_job) is None
    assert summarize.workload("Pod", foreign) is not None
    mirror = workload(
        "Pod",
        "kube-apiserver-n1",
        {"containers": [{"image": "registry.k8s.io/kube-apiserver:v1.31.0"}]},
        annotations={"kubernetes.io/config.mirror": "abc"},
    )
    assert summarize.workload("Pod", mirror) is None  # a static pod, bound to its node


def test_annotation_opt_out_and_opt_in() -> None:
    out = {"annotations": {"warm-images.io/warm": "false"}}
    opted_in = {"annotations": {"warm-images.io/warm": "true"}}
    normal = Summarizer(WatchSettings())
    assert normal.workload("Deployment", workload("Deployment", "d", template("a"), **out)) is None
    assert normal.workload("Deployment", workload("Deployment", "d", template("a"))) is not None
    opt_in = Summarizer(WatchSettings(opt_in=True))
    assert opt_in.workload("Deployment", workload("Deployment", "d", template("a"))) is None
    kept = workload("Deployment", "d", template("a"), **opted_in)
    assert opt_in.workload("Deployment", kept) is not None
    in_template = workload("Deployment", "d", template("a"))
    in_template["spec"]["template"]["metadata"] = opted_in
    assert opt_in.workload("Deployment", in_template) is not None


def test_image_globs_and_namespace_lists() -> None:
    spec = {"containers": [{"image": "nginx:1.25"}, {"image": "registry.local/team/app:2"}]}
    settings = WatchSettings(
        include_images=("docker.io/*", "registry.local/*"), exclude_images=("*/team/*",)
    )
    summary = Summarizer(settings).workload("Pod", workload("Pod", "p", spec))
    assert summary is not None and summary.images == {NGINX}
    ignoring = Summarizer(WatchSettings(ignore_namespaces=("default",)))
    assert ignoring.workload("Pod", workload("Pod", "p", spec)) is None
    listed = Summarizer(WatchSettings(namespaces=("apps",)))
    assert listed.workload("Pod", workload("Pod", "p", spec)) is None


def test_a_malformed_reference_is_reported_and_the_rest_proceeds() -> None:
    spec = {"containers": [{"image": "Bad Image!"}, {"image": "nginx:1.25"}]}
    summary = Summarizer(WatchSettings()).workload("Pod", workload("Pod", "p", spec))
    assert summary is not None and summary.images == {NGINX}
    state = CatalogState(WatchSettings())
    changes = state.apply([Changed("Pod", "default/p", summary)])
    assert NGINX in changes.added_images
    assert [(i.workload, i.reference) for i in changes.invalid] == [("default/Pod/p", "Bad Image!")]
    # A status update of the same pod does not report it again.
    assert not state.apply([Changed("Pod", "default/p", replace(summary))]).invalid


def test_one_image_many_users_one_entry_and_grace_period() -> None:
    now = [0.0]
    state = CatalogState(WatchSettings(catalog_grace_period=60), clock=lambda: now[0])
    summarize = Summarizer(WatchSettings())
    deploy = summarize.workload("Deployment", workload("Deployment", "d", template("nginx:1.25")))
    pod = summarize.workload("Pod", workload("Pod", "p", {"containers": [{"image": "nginx:1.25"}]}))
    changes = state.apply(
        [Changed("Deployment", "default/d", deploy), Changed("Pod", "default/p", pod)]
    )
    assert changes.added_images == {NGINX}
    assert state.images[NGINX].users == {"default/Deployment/d", "default/Pod/p"}
    state.apply([Listed("Pod", None, {}), Changed("Deployment", "default/d", None)])
    assert NGINX in state.images  # lingers for the grace period
    now[0] = 61
    assert state.apply([]).removed_images == {NGINX}
    assert NGINX not in state.images


def test_namespace_label_selector_follows_namespace_labels() -> None:
    state = CatalogState(WatchSettings(namespace_selector="warm=yes"))
    summary = Summarizer(WatchSettings()).workload(
        "Deployment", workload("Deployment", "d", template("nginx:1.25"))
    )
    state.apply([Changed("Deployment", "default/d", summary)])
    assert NGINX not in state.images
    assert NGINX in state.apply([Changed("Namespace", "default", (("warm", "yes"),))]).added_images
    state.apply([Changed("Namespace", "default", (("warm", "no"),))])
    assert not state.images[NGINX].users


def test_slices_per_node_class() -> None:
    explicit = (ExplicitImage("pause:3.9", (("pool", "edge"),)),)
    state = CatalogState(WatchSettings(explicit=explicit))
    index = SliceIndex(state)
    summarize = Summarizer(WatchSettings())
    arm = summarize.workload(
        "DaemonSet",
        workload(
            "DaemonSet", "arm", template("arm:1", nodeSelector={"kubernetes.io/arch": "arm64"})
        ),
    )
    nodes = {
        f"n{i}": node_facts(
            {"metadata": {"name": f"n{i}", "labels": {"kubernetes.io/arch": arch, "id": str(i)}}}
        )
        for i, arch in enumerate(["arm64", "arm64", "amd64"])
    }
    changes = state.apply([Listed("Node", None, nodes), Changed("DaemonSet", "default/arm", arm)])
    index.update(changes, rebuild=True)
    assert index.class_count == 2  # the id label is read by no rule

    def images(node: str) -> list[str]:
        return index.images(index.members(node))

    assert images("n0") == ["docker.io/library/arm:1"]
    assert index.members("n0") == index.members("n1")
    assert images("n2") == []
    # A node that gains the edge label moves to a class that holds the explicit image.
    edge = node_facts(
        {"metadata": {"name": "n2", "labels": {"kubernetes.io/arch": "amd64", "pool": "edge"}}}
    )
    affected = index.update(state.apply([Changed("Node", "n2", edge)]))
    assert "n2" in affected
    assert images("n2") == ["docker.io/library/pause:3.9"]
    assert index.target_nodes("docker.io/library/arm:1") == 2
    # The slice as the dispatcher writes it is the contract's ClassSlice, byte for byte.
    mask = index.members("n0")
    payload = index.slice_json(mask)
    assert payload == ClassSlice(index.slice_images(mask)).to_json()
    assert ClassSlice.from_json(payload).images[0].image == "docker.io/library/arm:1"


def test_a_freed_image_bit_is_not_reused_in_the_same_update() -> None:
    state = CatalogState(WatchSettings(catalog_grace_period=0))
    index = SliceIndex(state)
    summarize = Summarizer(WatchSettings())
    nodes = {"n0": node_facts({"metadata": {"name": "n0"}})}
    one = summarize.workload("Pod", workload("Pod", "a", {"containers": [{"image": "one"}]}))
    index.update(state.apply([Listed("Node", None, nodes), Changed("Pod", "ns/a", one)]))
    before = index.members("n0")
    two = summarize.workload("Pod", workload("Pod", "a", {"containers": [{"image": "two"}]}))
    index.update(state.apply([Changed("Pod", "ns/a", two)]))
    after = index.members("n0")
    assert index.images(after & ~before) == ["docker.io/library/two:latest"]
