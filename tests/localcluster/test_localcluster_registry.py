"""The registry serves what push_image pushed, enforces htpasswd, and survives pause/resume."""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from email.message import Message

import pytest

from localcluster import Registry, push_image
from localcluster.images import MANIFEST_MEDIA_TYPE

ALICE = ("alice", "wonderland")


def fetch(url: str, *, auth: tuple[str, str] | None = None) -> tuple[bytes, Message]:
    """GET url as a pull client would (OCI manifests accepted); return body and headers."""
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_MEDIA_TYPE})
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
        return resp.read(), resp.headers


def manifest_digest(
    registry: Registry, repo: str, tag: str, auth: tuple[str, str] | None = None
) -> str:
    body, headers = fetch(f"{registry.url}/v2/{repo}/manifests/{tag}", auth=auth)
    digest = str(headers["Docker-Content-Digest"])
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    return digest


def test_serves_pushed_manifest(registry: Registry) -> None:
    image = push_image(registry.host, "test/app", "v1", size_mib=0.5, layers=2)

    assert image.ref == f"{registry.host}/test/app:v1"
    assert image.size > 0.5 * 1024 * 1024  # random bytes do not compress
    assert manifest_digest(registry, "test/app", "v1") == image.digest
    tags, _ = fetch(f"{registry.url}/v2/test/app/tags/list")
    assert b'"v1"' in tags


def test_default_seed_makes_every_push_distinct(registry: Registry) -> None:
    first = push_image(registry.host, "test/app", "a", size_mib=0.1)
    second = push_image(registry.host, "test/app", "b", size_mib=0.1)
    assert first.digest != second.digest


def test_htpasswd_gives_401_without_credentials_and_200_with(private_registry: Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(f"{private_registry.url}/v2/")
    assert err.value.code == 401
    assert fetch(f"{private_registry.url}/v2/", auth=ALICE)[0] == b"{}"


def test_push_to_private_registry_needs_auth(private_registry: Registry) -> None:
    with pytest.raises(RuntimeError, match="401"):
        push_image(private_registry.host, "private/app", "v1", size_mib=0.1)
    image = push_image(private_registry.host, "private/app", "v1", size_mib=0.1, auth=ALICE)
    assert manifest_digest(private_registry, "private/app", "v1", auth=ALICE) == image.digest


def test_pause_and_resume_keep_port_and_images(registry: Registry) -> None:
    host = registry.host
    image = push_image(host, "test/app", "v1", size_mib=0.1)

    registry.pause()
    with pytest.raises(urllib.error.URLError):
        fetch(f"{registry.url}/v2/")
    registry.resume()

    assert registry.host == host
    assert manifest_digest(registry, "test/app", "v1") == image.digest


def test_stop_is_idempotent(registry: Registry) -> None:
    registry.stop()
    registry.stop()
    assert not registry.running()
