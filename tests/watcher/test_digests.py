"""The leader's tag → digest resolution against the real registry (distribution 2.8)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from watcher_testing import WatchedCluster, create, node, uid, wait_for, workload

from localcluster.harness import registry_requests
from localcluster.images import push_image
from localcluster.registry import Registry
from localcluster.token_auth import TokenServer
from tasks.images import parse_image
from tasks.names import PULL_IMAGE
from watcher.digests import DigestResolver, ManifestClient, ResolveFailed
from worker.runtime import Credentials

Start = Callable[..., WatchedCluster]


@pytest.fixture
def private_registry(workdir: Path, system_packages: None) -> Iterator[Registry]:
    with Registry(workdir / "digests-private", htpasswd={"alice": "wonderland"}) as running:
        yield running


@pytest.fixture
def token_registry(registry: Registry, workdir: Path) -> Iterator[tuple[Registry, TokenServer]]:
    """A registry behind Bearer token auth, serving what was pushed to ``registry``."""
    with (
        TokenServer(workdir / "digests-token", {"bob": "builder"}, {"id-123": "bob"}) as tokens,
        Registry(workdir / "digests-token", token=tokens, storage=registry.storage) as running,
    ):
        yield running, tokens


def lookups(outcome: str) -> float:
    value = REGISTRY.get_sample_value("warm_watcher_digest_lookups_total", {"outcome": outcome})
    return value or 0.0


def manifest_requests(registry: Registry, ref: str) -> int:
    """Requests for ``ref``'s manifest by tag, in the registry's own access log."""
    image = parse_image(ref)
    return len(registry_requests(registry, f"/v2/{image.repository}/manifests/{image.tag} "))


def test_resolves_a_tag_and_follows_it_when_it_moves(registry: Registry) -> None:
    first = push_image(registry.host, "digests/moving", "latest")
    client = ManifestClient(timeout=5.0)
    image = parse_image(first.ref)
    assert client.digest(image) == first.digest
    second = push_image(registry.host, "digests/moving", "latest")
    assert second.digest != first.digest
    assert client.digest(image) == second.digest


def test_basic_auth_with_the_pull_secret(private_registry: Registry) -> None:
    pushed = push_image(private_registry.host, "digests/private", "v1", auth=private_registry.auth)
    client, image = ManifestClient(timeout=5.0), parse_image(pushed.ref)
    wrong = Credentials(username="alice", password="nope")
    right = Credentials(username="alice", password="wonderland")
    assert client.digest(image, [wrong, right]) == pushed.digest  # candidates tried in turn
    before = manifest_requests(private_registry, pushed.ref)
    assert client.digest(image, [right]) == pushed.digest
    assert manifest_requests(private_registry, pushed.ref) - before == 1  # Basic sent up front
    with pytest.raises(ResolveFailed, match="answered 401"):
        client.digest(image, [wrong])
    with pytest.raises(ResolveFailed, match="Basic auth and no pull secret fits"):
        client.digest(image)


def test_bearer_challenge_token_endpoint_and_a_token_reused_per_repository(
    registry: Registry, token_registry: tuple[Registry, TokenServer]
) -> None:
    protected, tokens = token_registry
    pushed = push_image(registry.host, "digests/token", "v1")
    image = parse_image(f"{protected.host}/digests/token:v1")
    client = ManifestClient(timeout=5.0)
    right = Credentials(username="bob", password="builder")

    assert client.digest(image, [right]) == pushed.digest
    assert client.digest(image, [right]) == pushed.digest
    assert tokens.issued == 1  # the second lookup presented the cached token
    assert manifest_requests(protected, str(image)) == 3  # 401, then 200, then 200
    identity = Credentials(username="<token>", identity_token="id-123")
    assert client.digest(image, [identity]) == pushed.digest  # exchanged by POST
    with pytest.raises(ResolveFailed, match="token endpoint answered 401"):
        client.digest(image, [Credentials(username="bob", password="wrong")])
    with pytest.raises(ResolveFailed, match="token endpoint answered 401"):
        client.digest(image)  # anonymous: this server grants nothing


def test_one_manifest_request_per_image_per_round(registry: Registry) -> None:
    images = {push_image(registry.host, f"digests/round{i}", "v1").ref: () for i in range(3)}
    resolver = DigestResolver(lambda image, secrets: [], interval=3600.0, timeout=5.0)
    before = {ref: manifest_requests(registry, ref) for ref in images}
    resolver.resolve(images)
    assert resolver.changed() == dict.fromkeys(images)
    resolver.resolve(images)
    assert resolver.changed() == {}  # nothing moved: nothing to republish
    for ref in images:
        assert manifest_requests(registry, ref) - before[ref] == 2


def test_an_unreachable_registry_keeps_the_last_known_digest(registry: Registry) -> None:
    pushed = push_image(registry.host, "digests/down", "v1")
    resolver = DigestResolver(lambda image, secrets: [], interval=3600.0, timeout=2.0)
    resolver.resolve({pushed.ref: ()})
    assert resolver.changed() == {pushed.ref: None}
    failed = lookups("failed")
    registry.pause()
    try:
        resolver.resolve({pushed.ref: ()})
    finally:
        registry.resume()
    assert lookups("failed") == failed + 1  # counted, and nothing else
    assert resolver.digest(pushed.ref) == pushed.digest
    assert resolver.changed() == {}
    moved = push_image(registry.host, "digests/down", "v1")
    resolver.resolve({pushed.ref: ()})
    assert resolver.changed() == {pushed.ref: pushed.digest}  # what it moved from
    assert resolver.digest(pushed.ref) == moved.digest


def test_the_thread_resolves_rounds_and_new_images_between_them(registry: Registry) -> None:
    pushed = push_image(registry.host, "digests/offered", "v1")
    added = push_image(registry.host, "digests/added", "v1")
    resolver = DigestResolver(lambda image, secrets: [], interval=3600.0, timeout=5.0)
    stop = threading.Event()
    thread = threading.Thread(target=resolver.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert resolver.due
        resolver.offer({pushed.ref: ()})
        assert not resolver.due  # offered: the loop does not offer again meanwhile
        wait_for(lambda: resolver.digest(pushed.ref) == pushed.digest, what="the round")
        assert not resolver.due  # the next round is an interval away
        resolver.add({added.ref: ()})  # new to the catalog: resolved now, not in an hour
        wait_for(lambda: resolver.digest(added.ref) == added.digest, what="the new image")
        resolver.offer({added.ref: ()})  # the first image left the catalog: its digest goes
        assert resolver.digest(pushed.ref) is None
    finally:
        stop.set()
        thread.join(5)


def test_the_leader_puts_digests_in_entries_and_slices_and_pulls_a_moved_tag(
    start_watcher: Start, registry: Registry
) -> None:
    tag = uid()
    name = f"n-{tag}"
    pushed = push_image(registry.host, f"digests/watched-{tag}", "latest")
    cluster = start_watcher(nodes=[node(name)])
    create(cluster.api, workload("Deployment", f"app-{tag}", pushed.ref))

    def digests() -> tuple[str | None, set[str | None]] | None:
        entry = cluster.entries().get(pushed.ref)
        if entry is None or cluster.slice_images(name) is None:
            return None
        node_slice, _ = cluster.catalog.get_slice(name)
        return entry.digest, {item.digest for item in node_slice.images}

    wait_for(lambda: digests() == (pushed.digest, {pushed.digest}), what="the digest published")
    pulls_before = [t for t in cluster.tasks(name) if t[0] == PULL_IMAGE]
    moved = push_image(registry.host, f"digests/watched-{tag}", "latest")
    cluster.watcher.digests.refresh()  # the next round now, not in WARM_REWARM_INTERVAL
    wait_for(lambda: digests() == (moved.digest, {moved.digest}), what="the moved digest")
    pulls = [t for t in cluster.tasks(name) if t[0] == PULL_IMAGE]
    assert pulls[len(pulls_before) :] == [(PULL_IMAGE, {"node": name, "image": pushed.ref})]


def test_the_leader_resolves_a_private_image_with_the_workloads_pull_secret(
    start_watcher: Start, private_registry: Registry
) -> None:
    tag, team = uid(), f"team-{uid()}"
    pushed = push_image(
        private_registry.host, f"digests/private-{tag}", "v1", auth=private_registry.auth
    )
    cluster = start_watcher(nodes=[node(f"n-{tag}")], release_namespace="warm-system")
    auth = base64.b64encode(b"alice:wonderland").decode()
    config = json.dumps({"auths": {private_registry.host: {"auth": auth}}}).encode()
    secret: Any = {
        "metadata": {"name": "regcred", "namespace": team},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }
    cluster.core.create_namespaced_secret(team, secret)
    pull_secrets = [{"name": "regcred"}]
    spec = workload("Deployment", "web", pushed.ref, namespace=team, imagePullSecrets=pull_secrets)
    create(cluster.api, spec)

    def digest() -> str | None:
        entry = cluster.entries().get(pushed.ref)
        return entry.digest if entry else None

    wait_for(lambda: digest() == pushed.digest, what="the private image's digest")
