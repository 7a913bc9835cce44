"""Pull secrets mirrored into a namespace of their own, against the API double over real HTTP.

The leading watcher copies the registry Secrets that workloads reference into the mirror
namespace (WARM_PULL_SECRET_NAMESPACE) under its own names, keeps the copies equal to their
sources, deletes those nothing references, and publishes only the copies' names. Its Secret
access outside the mirror namespace is ``get`` on referenced names, and nothing in the release
namespace, read back from the double's request log.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY
from watcher_testing import WatchedCluster, create, node, uid, wait_for, workload

from localcluster import FakeKubeAPI
from tasks.names import PULL_IMAGE, mirrored_secret_name
from tasks.settings import WatchSettings
from watcher.catalog import CatalogState
from watcher.mirror import MANAGED_BY, SOURCE_NAME, SOURCE_NAMESPACE, SecretMirror
from watcher.reflector import Changed
from watcher.workloads import Summarizer

Start = Callable[..., WatchedCluster]
RELEASE = "warm-system"
MIRROR = "warm-system-pull-secrets"
SECRET = [{"name": "regcred"}]
BATCH = 4  # the product's is larger; the rule is the same


def registry_secret(
    namespace: str, name: str, password: str, kind: str = "dockerconfigjson"
) -> Any:
    auth = base64.b64encode(f"alice:{password}".encode()).decode()
    config = json.dumps({"auths": {"registry.test": {"auth": auth}}}).encode()
    field = ".dockerconfigjson" if kind == "dockerconfigjson" else ".dockercfg"
    return {
        "metadata": {"name": name, "namespace": namespace},
        "type": f"kubernetes.io/{kind}",
        "data": {field: base64.b64encode(config).decode()},
    }


def copies(cluster: WatchedCluster) -> dict[str, Any]:
    """The watcher's copies in the mirror namespace, by name."""
    found = cluster.core.list_namespaced_secret(MIRROR, label_selector=MANAGED_BY).items
    return {secret.metadata.name: secret for secret in found}


def data_of(cluster: WatchedCluster, namespace: str, name: str) -> Any:
    return cluster.core.read_namespaced_secret(name, namespace).data


def test_referenced_registry_secrets_are_mirrored_followed_and_deleted(
    start_watcher: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="watcher.mirror")
    tag, team = uid(), f"team-{uid()}"
    name = f"n-{tag}"
    cluster = start_watcher(
        nodes=[node(name)],
        release_namespace=RELEASE,
        pull_secret_namespace=MIRROR,
        pull_secret_sync_interval=0.5,
    )
    cluster.api.user_agent = "the-test"  # the watcher's requests are the others
    wait_for(lambda: cluster.tasks(name), what="the joining node's re-warm")
    cluster.broker.delete(f"warm.node.{name}")
    core = cluster.core
    core.create_namespaced_secret(team, registry_secret(team, "regcred", "one"))
    core.create_namespaced_secret(team, registry_secret(team, "legacy", "old", "dockercfg"))
    opaque = {"metadata": {"name": "opaque"}, "type": "Opaque", "data": {"x": "eA=="}}
    core.create_namespaced_secret(team, opaque)
    core.create_namespaced_secret("default", registry_secret("default", "unused", "zzz"))
    image = f"registry.test/private-{tag}:1"
    pull_secrets = [{"name": n} for n in ("regcred", "legacy", "opaque", "missing")]
    create(
        cluster.api,
        workload("Deployment", "web", image, namespace=team, imagePullSecrets=pull_secrets),
    )
    create(
        cluster.api,
        workload("Job", "batch", image, namespace=team, imagePullSecrets=[{"name": "regcred"}]),
    )
    regcred, legacy = (
        mirrored_secret_name(f"{team}/regcred"),
        mirrored_secret_name(f"{team}/legacy"),
    )

    wait_for(lambda: set(copies(cluster)) == {regcred, legacy}, what="the two copies")
    copy = copies(cluster)[regcred]
    assert copy.type == "kubernetes.io/dockerconfigjson"
    assert copy.data == data_of(cluster, team, "regcred")
    assert copy.metadata.labels[MANAGED_BY] == "warm-images"
    assert copy.metadata.annotations == {SOURCE_NAMESPACE: team, SOURCE_NAME: "regcred"}
    assert copies(cluster)[legacy].type == "kubernetes.io/dockercfg"
    published = tuple(sorted(f"{MIRROR}/{n}" for n in (regcred, legacy)))
    wait_for(lambda: image in cluster.entries(), what="the catalog entry")
    assert cluster.entries()[image].pull_secrets == published
    node_slice, _ = cluster.catalog.get_slice(name)
    assert [item.pull_secrets for item in node_slice.images] == [published]
    wait_for(lambda: cluster.tasks(name), what="the pull task")
    assert [kwargs for task, kwargs in cluster.tasks(name) if task == PULL_IMAGE] == [
        {"node": name, "image": image}  # no secret name travels in a message
    ]
    assert caplog.text.count("ignored: type Opaque") == 1  # once, not at every re-read
    assert REGISTRY.get_sample_value("warm_watcher_pull_secret_copies") == 2
    assert REGISTRY.get_sample_value("warm_watcher_pull_secrets_skipped") == 2
    assert f"pull secret {team}/missing not readable (404)" in caplog.text

    # The source changes (a rotated password): the copy follows.
    core.replace_namespaced_secret("regcred", team, registry_secret(team, "regcred", "two"))
    wait_for(
        lambda: copies(cluster)[regcred].data == data_of(cluster, team, "regcred"),
        what="the copy updated",
    )
    # One of two users goes: the copy stays; the other drops its reference too: it goes.
    cluster.apps.delete_namespaced_deployment("web", team)
    wait_for(lambda: set(copies(cluster)) == {regcred}, what="the unreferenced copy deleted")
    cluster.batch.delete_namespaced_job("batch", team)
    wait_for(lambda: not copies(cluster), what="the last copy deleted")

    watcher = [r for r in cluster.kube.requests("secrets") if r.user_agent != "the-test"]
    outside = [r for r in watcher if r.namespace != MIRROR]
    assert {r.verb for r in outside} == {"get"}
    assert {r.name for r in outside} == {"regcred", "legacy", "opaque", "missing"}
    assert not [r for r in watcher if r.namespace == RELEASE]  # the release's own Secrets
    inside = {r.verb for r in watcher if r.namespace == MIRROR}
    # get: the leader reads its copies to resolve the images' digests (watcher/digests.py).
    assert inside == {"get", "list", "create", "update", "delete"}


def test_a_new_leader_deletes_copies_left_for_sources_nothing_references(
    start_watcher: Start,
) -> None:
    tag = uid()
    cluster = start_watcher(
        nodes=[node(f"n-{tag}")], release_namespace=RELEASE, pull_secret_namespace=MIRROR
    )
    stale = registry_secret(MIRROR, mirrored_secret_name("gone/regcred"), "x")
    stale["metadata"]["labels"] = {
        MANAGED_BY: "warm-images",
        "app.kubernetes.io/component": "pull-secret-mirror",
    }
    stale["metadata"]["annotations"] = {SOURCE_NAMESPACE: "gone", SOURCE_NAME: "regcred"}
    foreign = registry_secret(MIRROR, "someone-elses", "y")
    cluster.core.create_namespaced_secret(MIRROR, stale)
    cluster.core.create_namespaced_secret(MIRROR, foreign)

    wait_for(lambda: not copies(cluster), what="the stale copy deleted")
    assert cluster.core.read_namespaced_secret("someone-elses", MIRROR)  # not its own: kept


def test_with_pull_secrets_off_the_catalog_names_none() -> None:
    summary = Summarizer(WatchSettings()).workload(
        "Deployment", workload("Deployment", "web", "registry.test/a:1", imagePullSecrets=SECRET)
    )
    assert summary is not None
    events = [Changed("Deployment", "default/web", summary)]
    on = CatalogState(WatchSettings(), mirror_namespace=MIRROR)
    off = CatalogState(WatchSettings())  # the watcher's state with WARM_PULL_SECRETS=false
    on.apply(events)
    off.apply(events)

    assert on.catalog_secrets("registry.test/a:1") == (
        f"{MIRROR}/{mirrored_secret_name('default/regcred')}",
    )
    assert on.referenced_secrets() == {"default/regcred"}
    assert off.catalog_secrets("registry.test/a:1") == ()
    assert off.referenced_secrets() == set()


def test_stale_sources_are_read_again_a_batch_at_a_time_and_lost_copies_come_back() -> None:
    now = [0.0]
    with FakeKubeAPI() as kube:
        core = client.CoreV1Api(kube.api_client())
        sources = {f"team/s{i:02d}" for i in range(3 * BATCH)}
        for source in sources:
            namespace, _, name = source.partition("/")
            core.create_namespaced_secret(namespace, registry_secret(namespace, name, "pw"))
        mirror = SecretMirror(kube.api_client(), MIRROR, 60, clock=lambda: now[0], batch=BATCH)

        def reads() -> int:
            return sum(r.verb == "get" for r in kube.requests("secrets"))

        appeared = mirror.sync(sources)
        first = reads()
        now[0] = 61.0
        assert mirror.due
        mirror.sync(sources)
        batch = reads() - first
        for _ in range(2):
            mirror.sync(sources)
        core.delete_namespaced_secret(mirrored_secret_name("team/s00"), MIRROR)
        now[0] = 122.0  # the next list finds the copy gone
        gone = mirror.sync(sources)

        assert appeared == sources and first == len(sources)  # new ones: copied at once
        assert batch == BATCH  # stale ones: a batch per sync
        assert reads() - first >= len(sources)  # and every one within three syncs
        assert gone == set()  # copied again in the same sync: the catalog never lost it
        assert core.read_namespaced_secret(mirrored_secret_name("team/s00"), MIRROR)
