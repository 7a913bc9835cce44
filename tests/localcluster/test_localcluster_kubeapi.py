"""The Kubernetes API double, driven by the official client over real HTTP."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from localcluster import FakeKubeAPI
from localcluster.harness import wait_for

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "front"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/shop/web:v1"}]},
        },
    },
}


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def apps(kube: FakeKubeAPI) -> client.AppsV1Api:
    return client.AppsV1Api(kube.api_client())


@pytest.fixture
def core(kube: FakeKubeAPI) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


def test_create_and_list_deployment_and_nodes(
    apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    created = apps.create_namespaced_deployment("shop", DEPLOYMENT)
    core.create_node(node("n1", pool="gpu"))
    core.create_node(node("n2", pool="cpu"))

    assert created.metadata.uid and created.metadata.resource_version
    deployments = apps.list_deployment_for_all_namespaces()
    assert [d.metadata.name for d in deployments.items] == ["web"]
    assert deployments.items[0].spec.template.spec.containers[0].image.endswith("web:v1")
    nodes = core.list_node()
    assert sorted(n.metadata.name for n in nodes.items) == ["n1", "n2"]
    assert int(nodes.metadata.resource_version) >= int(created.metadata.resource_version)
    assert [n.metadata.name for n in core.list_node(label_selector="pool=gpu").items] == ["n1"]
    assert [n.metadata.name for n in core.list_node(field_selector="metadata.name=n2").items] == [
        "n2"
    ]


def test_watch_from_list_version_sees_later_modification(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment("shop", DEPLOYMENT)
    listed = apps.list_namespaced_deployment("shop")
    apps.patch_namespaced_deployment("web", "shop", {"spec": {"replicas": 3}})

    events = watch.Watch().stream(
        apps.list_namespaced_deployment,
        "shop",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=5,
    )
    first = next(events)

    assert first["type"] == "MODIFIED"  # replayed from history, no synthetic ADDED
    assert first["object"].spec.replicas == 3
    assert int(first["object"].metadata.resource_version) > int(listed.metadata.resource_version)


def test_live_watch_sees_modification_made_later(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment("shop", DEPLOYMENT)
    listed = apps.list_namespaced_deployment("shop")
    timer = threading.Timer(
        0.3, apps.patch_namespaced_deployment, ("web", "shop", {"spec": {"replicas": 2}})
    )
    timer.start()
    try:
        events = watch.Watch().stream(
            apps.list_namespaced_deployment,
            "shop",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        )
        first = next(events)
    finally:
        timer.join()
    assert (first["type"], first["object"].spec.replicas) == ("MODIFIED", 2)


def test_compact_makes_old_version_watch_get_410(kube: FakeKubeAPI, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment("shop", DEPLOYMENT)
    old = apps.list_namespaced_deployment("shop").metadata.resource_version
    apps.patch_namespaced_deployment("web", "shop", {"spec": {"replicas": 3}})
    kube.compact()

    response = apps.list_namespaced_deployment(
        "shop", watch=True, resource_version=old, timeout_seconds=5, _preload_content=False
    )
    lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]

    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410
    with pytest.raises(client.ApiException) as err:
        list(
            watch.Watch().stream(
                apps.list_namespaced_deployment, "shop", resource_version=old, timeout_seconds=5
            )
        )
    assert err.value.status == 410


def test_expire_next_watches_and_kick(kube: FakeKubeAPI, core: client.CoreV1Api) -> None:
    core.create_node(node("n1"))
    current = core.list_node().metadata.resource_version
    before = kube.served()
    kube.expire_next_watches(1)
    with pytest.raises(client.ApiException) as err:
        list(watch.Watch().stream(core.list_node, resource_version=current, timeout_seconds=5))
    assert err.value.status == 410

    ended = threading.Event()

    def follow() -> None:
        for _ in watch.Watch().stream(core.list_node, resource_version=current, timeout_seconds=30):
            pass
        ended.set()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    # kick() ends live watches only
    wait_for(lambda: kube.call(lambda emulator: len(emulator.live)) > 0, 5, "the watch to start")
    assert not ended.wait(0.2)
    kube.kick()
    assert ended.wait(5)
    served = kube.served()  # the double's own count of what it did, for drills to report
    for what in ("410 Gone", "watch dropped"):
        assert served.get(what, 0) - before.get(what, 0) == 1, served


def test_bookmarks_when_asked(core: client.CoreV1Api) -> None:
    core.create_node(node("n1"))
    current = core.list_node().metadata.resource_version
    events = watch.Watch().stream(
        core.list_node, resource_version=current, allow_watch_bookmarks=True, timeout_seconds=2
    )
    first = next(events)
    assert first["type"] == "BOOKMARK"
    assert first["raw_object"]["metadata"]["resourceVersion"] == current


def test_put_replaces_and_stale_version_conflicts(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment("shop", DEPLOYMENT)
    current = apps.read_namespaced_deployment("web", "shop")
    current.spec.replicas = 4
    replaced = apps.replace_namespaced_deployment("web", "shop", current)
    assert replaced.spec.replicas == 4

    with pytest.raises(client.ApiException) as err:
        apps.replace_namespaced_deployment("web", "shop", current)  # its version is now stale
    assert err.value.status == 409


def test_namespaces_can_be_created_and_read(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "shop"}})
    assert core.read_namespace("shop").metadata.name == "shop"
    assert [ns.metadata.name for ns in core.list_namespace().items] == ["shop"]


def test_secrets_are_served_in_namespaces_and_every_request_is_logged(
    kube: FakeKubeAPI, core: client.CoreV1Api
) -> None:
    secret = {
        "metadata": {"name": "regcred", "labels": {"team": "a"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
    }
    created = core.create_namespaced_secret("shop", secret)
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_secret("shop", secret)
    assert err.value.status == 409
    events = watch.Watch().stream(
        core.list_namespaced_secret,
        "shop",
        resource_version=created.metadata.resource_version,
        timeout_seconds=5,
    )
    core.patch_namespaced_secret("regcred", "shop", {"metadata": {"annotations": {"a": "1"}}})
    current = core.read_namespaced_secret("regcred", "shop")
    current.data = {".dockerconfigjson": "e30K"}
    core.replace_namespaced_secret("regcred", "shop", current)
    listed = core.list_namespaced_secret("shop", label_selector="team=a").items
    core.delete_namespaced_secret("regcred", "shop")

    assert next(events)["object"].metadata.annotations == {"a": "1"}
    assert [s.data for s in listed] == [{".dockerconfigjson": "e30K"}]
    assert core.list_namespaced_secret("other").items == []
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_secret("regcred", "shop")
    assert err.value.status == 404
    verbs = sorted(r.verb for r in kube.requests("secrets"))  # the watch starts lazily
    assert verbs == sorted(
        ["create", "create", "watch", "patch", "get", "update", "list", "list", "delete", "get"]
    )
    assert ("get", "shop", "regcred") in [(r.verb, r.namespace, r.name) for r in kube.requests()]


def test_kubeconfig_works_in_another_process(kube: FakeKubeAPI, tmp_path: Path) -> None:
    client.CoreV1Api(kube.api_client()).create_node(node("n1"))
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    script = (
        "from kubernetes import client, config; config.load_kube_config(); "
        "print(*[n.metadata.name for n in client.CoreV1Api().list_node().items])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["n1"]


def test_old_history_is_dropped_and_its_watches_get_410() -> None:
    with FakeKubeAPI(history_limit=10) as kube:
        core = client.CoreV1Api(kube.api_client())
        first = core.create_node(node("n0")).metadata.resource_version
        for i in range(1, 30):
            core.create_node(node(f"n{i}"))
        recent = str(int(core.list_node().metadata.resource_version) - 5)

        with pytest.raises(client.ApiException) as err:
            list(watch.Watch().stream(core.list_node, resource_version=first, timeout_seconds=2))
        assert err.value.status == 410
        events = watch.Watch().stream(core.list_node, resource_version=recent, timeout_seconds=2)
        assert [e["object"].metadata.name for e in itertools.islice(events, 5)] == [
            f"n{i}" for i in range(25, 30)
        ]


def test_json_patch_guarded_by_resource_version(core: client.CoreV1Api) -> None:
    """A JSON patch applies to the version its ``test`` op names; on any other it is refused
    with 422, as the apiserver does, and changes nothing."""
    taints = [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]
    body: Any = {"metadata": {"name": "gated"}, "spec": {"taints": taints}}
    core.create_node(body)
    node: Any = core.read_node("gated")
    version = str(node.metadata.resource_version)

    def remove_second(at: str) -> Any:
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": at},
            {"op": "remove", "path": "/spec/taints/1"},
        ]

    with pytest.raises(client.ApiException) as refused:
        core.patch_node("gated", remove_second(f"{version}0"))
    assert refused.value.status == 422
    node = core.read_node("gated")
    assert [t.key for t in node.spec.taints] == ["a", "b"]
    node = core.patch_node("gated", remove_second(version))
    assert [t.key for t in node.spec.taints] == ["a"]
    assert int(node.metadata.resource_version) > int(version)


def test_events_are_one_store_served_as_core_v1_and_events_k8s_io_v1(
    kube: FakeKubeAPI, core: client.CoreV1Api
) -> None:
    """As in the apiserver: an Event written through either API version is read through the
    other, converted, with the same uid and resourceVersion, in lists, gets and watches, and
    ``reason`` selects in both."""
    events = client.EventsV1Api(kube.api_client())
    at = "2026-01-01T00:00:00Z"
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "kubelet.1"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "reason": "Pulled",
            "message": 'Container image "nginx" already present on machine',
            "source": {"component": "kubelet", "host": "node-1"},
            "count": 2,
            "lastTimestamp": at,
        },
    )
    listed = json.loads(events.list_event_for_all_namespaces(_preload_content=False).data)
    stream = events.list_event_for_all_namespaces(
        watch=True,
        resource_version=listed["metadata"]["resourceVersion"],
        field_selector="reason=Pulled",
        timeout_seconds=3,
        _preload_content=False,
    )
    events.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "recorder.1"},
            "regarding": {"kind": "Pod", "name": "db"},
            "reason": "Pulled",
            "note": 'Successfully pulled image "redis" in 1s (2s including waiting)',
            "reportingController": "kubelet",
            "reportingInstance": "node-2",
            "action": "Pulled",
            "eventTime": "2026-01-01T00:00:00.000000Z",
        },
        _preload_content=False,
    )
    other = {"kind": "Pod", "name": "web"}
    core.create_namespaced_event(
        "default",
        {"metadata": {"name": "other.1"}, "involvedObject": other, "reason": "Started"},
    )
    watched = [json.loads(line) for line in watch.watch.iter_resp_lines(stream) if line]

    (first,) = listed["items"]
    assert listed["apiVersion"] == "events.k8s.io/v1"
    assert (first["note"], first["deprecatedCount"], first["deprecatedSource"]["host"]) == (
        'Container image "nginx" already present on machine',
        2,
        "node-1",
    )
    stored = core.read_namespaced_event("kubelet.1", "default")
    assert first["metadata"]["uid"] == stored.metadata.uid
    assert first["metadata"]["resourceVersion"] == stored.metadata.resource_version
    added = [e["object"] for e in watched if e["type"] == "ADDED"]  # no Started: selected out
    assert [(e["apiVersion"], e["metadata"]["name"]) for e in added] == [
        ("events.k8s.io/v1", "recorder.1")
    ]
    as_core = core.list_event_for_all_namespaces(field_selector="reason=Pulled").items
    recorded = next(e for e in as_core if e.metadata.name == "recorder.1")
    assert (recorded.message, recorded.reporting_component) == (
        'Successfully pulled image "redis" in 1s (2s including waiting)',
        "kubelet",
    )
    assert {e.metadata.name for e in as_core} == {"kubelet.1", "recorder.1"}


def _review(kube: FakeKubeAPI, token: str, audiences: list[str] | None) -> client.V1TokenReview:
    spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
    api = client.AuthenticationV1Api(kube.api_client())
    return api.create_token_review(client.V1TokenReview(spec=spec))


def test_token_review_of_a_pod_bound_token(kube: FakeKubeAPI, core: client.CoreV1Api) -> None:
    """As the apiserver: the ServiceAccount's user, the pod and its node in ``extra``, only for
    the token's audiences, and only while that pod exists."""
    core.create_node(node("n1"))
    pod = {"metadata": {"name": "w-1"}, "spec": {"nodeName": "n1", "containers": []}}
    uid = core.create_namespaced_pod("ns", pod).metadata.uid
    token = kube.issue_token("ns", "worker", audiences=("warm-images",), pod="w-1")

    status = _review(kube, token, ["warm-images", "other"]).status
    assert status.authenticated and status.audiences == ["warm-images"]
    assert status.user.username == "system:serviceaccount:ns:worker"
    assert "system:serviceaccounts:ns" in status.user.groups
    extra = {key.split("/")[1]: value for key, value in status.user.extra.items()}
    assert extra["pod-name"] == ["w-1"] and extra["pod-uid"] == [uid]
    assert extra["node-name"] == ["n1"] and extra["node-uid"][0]

    for audiences in (None, ["other"]):  # None: the API's own audience
        assert not _review(kube, token, audiences).status.authenticated
    assert "lookup failed" in _review(kube, "forged", ["warm-images"]).status.error
    core.delete_namespaced_pod("w-1", "ns")
    refused = _review(kube, token, ["warm-images"]).status
    assert not refused.authenticated and "not found" in refused.error
    with pytest.raises(LookupError):
        kube.issue_token("ns", "worker", pod="w-1")
