"""The simulated fleet's runtime pulls from the real registry as containerd does, and the
counting proxy in front of it counts manifests by method, blobs, and who asked."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from localcluster import Registry, push_image
from localcluster.httpnode import ACCEPT, AGENT, HttpNodeRuntime
from localcluster.proxy import CountingProxy
from worker.runtime import FailureKind, PullFailed


@pytest.fixture
def proxy(registry: Registry) -> Iterator[CountingProxy]:
    with CountingProxy(registry.host, blob_delay=0.0) as counting:
        yield counting


def test_pulls_by_tag_then_by_digest_fetching_only_missing_blobs(
    registry: Registry, proxy: CountingProxy
) -> None:
    repository = f"fleet/{uuid.uuid4().hex[:8]}"
    first = push_image(registry.host, repository, "latest", size_mib=0.5)
    ref = first.ref.replace(registry.host, proxy.host, 1)
    name = ref.rsplit(":", 1)[0]
    node = HttpNodeRuntime("n1")

    image_id = node.pull(ref, timeout=30)
    held = node.image_status(ref)
    assert held is not None and held.id == image_id
    assert held.repo_tags == (ref,) and held.repo_digests == (f"{name}@{first.digest}",)
    assert proxy.blob_downloads == 2  # config and layer
    assert proxy.manifest_requests("GET", f"{AGENT}/n1") == 1

    node.pull(ref, timeout=30)  # every blob held: only the manifest is asked for
    assert proxy.blob_downloads == 2 and proxy.manifest_requests("GET") == 2
    head = urllib.request.Request(
        f"http://{proxy.host}/v2/{repository}/manifests/latest",
        headers={"Accept": ACCEPT},
        method="HEAD",
    )
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == first.digest
    assert proxy.manifest_requests("HEAD") == 1 and proxy.manifest_requests() == 3

    moved = push_image(registry.host, repository, "latest", size_mib=0.5)
    node.pull(f"{name}@{moved.digest}", timeout=30)
    by_digest = node.image_status(f"{name}@{moved.digest}")
    assert by_digest is not None and by_digest.repo_tags == ()  # CRI: no tag from a digest
    node.pull(ref, timeout=30)
    assert node.image_status(ref) == node.image_status(f"{name}@{moved.digest}")
    old = node.image_status(f"{name}@{first.digest}")
    assert old is not None and old.repo_tags == ()  # the tag moved off the old image
    assert proxy.blob_downloads == 4


def test_a_missing_tag_or_blob_fails_for_good_and_counts_who_asked(
    registry: Registry, proxy: CountingProxy
) -> None:
    repository = f"fleet/{uuid.uuid4().hex[:8]}"
    pushed = push_image(registry.host, repository, "v1", size_mib=0.5)
    ref = pushed.ref.replace(registry.host, proxy.host, 1)
    with pytest.raises(PullFailed) as missing:
        HttpNodeRuntime("n1").pull(ref.replace(":v1", ":v2"), timeout=30)
    assert missing.value.kind is FailureKind.PERMANENT and "not found" in missing.value.reason

    layer = registry_layer(registry, repository, "v1")
    delete = urllib.request.Request(
        f"{registry.url}/v2/{repository}/blobs/{layer}", method="DELETE"
    )
    urllib.request.urlopen(delete, timeout=10).close()
    with pytest.raises(PullFailed) as broken:
        HttpNodeRuntime("n2").pull(ref, timeout=30)
    assert broken.value.kind is FailureKind.PERMANENT
    asked = {r.agent for r in proxy.requests if r.repository == repository}
    assert asked == {f"{AGENT}/n1", f"{AGENT}/n2"}


def test_bandwidth_is_shared_by_downloads_at_once(registry: Registry) -> None:
    pushed = push_image(registry.host, f"fleet/{uuid.uuid4().hex[:8]}", "v1", size_mib=1)
    with CountingProxy(registry.host, blob_delay=0.0, bandwidth=4 * 2**20) as paced:
        started = time.monotonic()
        HttpNodeRuntime("n1").pull(pushed.ref.replace(registry.host, paced.host, 1), timeout=30)
        took = time.monotonic() - started
    assert 0.2 <= took < 2.0  # 1 MiB at 4 MiB/s


def registry_layer(registry: Registry, repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["layers"][0]["digest"])
