"""A simulated node's image store that pulls from a real registry over HTTP, as containerd does.

A fleet of hundreds of nodes cannot run a containerd each on one machine (about 38 MB and a
process per node), yet what a fleet costs the registry is what its runtimes ask of it. This
runtime behind the worker's :class:`ImageRuntime` seam does what containerd's pull does at the
registry's door, with the registry's own answers: ``GET`` the manifest by tag or digest (an
index is followed to its linux/amd64 manifest), then ``GET`` each blob the node's content store
lacks, one after another, streamed to the end and counted, never kept. It records images the
way CRI reports them: a pull by tag names the tag and the digest, a pull by digest only the
digest, a moved tag leaves its old image; an image's id is its config digest.

Each request carries ``User-Agent: warm-fleet-node/<node>``, so a proxy in front of the
registry can tell which node asked. No registry auth: the simulated fleet pulls anonymously.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import requests

from tasks.images import parse_image
from worker.runtime.base import (
    Credentials,
    FailureKind,
    FilesystemUsage,
    PullFailed,
    RuntimeImage,
)
from worker.runtime.fake import HeldImage

AGENT = "warm-fleet-node"
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
_INDEXES = ("index", "manifest.list")
_CHUNK = 1024 * 1024


class HttpNodeRuntime:
    """One simulated node's runtime: its images and its content store, in memory."""

    name = "httpnode"

    def __init__(self, node: str, *, timeout: float = 60.0) -> None:
        self.node = node
        self._timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"{AGENT}/{node}"
        self._blobs: dict[str, int] = {}  # digest -> size: the content store
        self._images: dict[str, HeldImage] = {}  # by id
        self._lock = threading.Lock()

    def version(self, timeout: float | None = None) -> str:
        return "httpnode 1.0"

    def list_images(self) -> list[RuntimeImage]:
        with self._lock:
            return [image.as_runtime_image() for image in self._images.values()]

    def image_status(self, reference: str) -> RuntimeImage | None:
        with self._lock:
            found = self._find(reference)
            return found.as_runtime_image() if found else None

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str:
        image = parse_image(reference)
        base = f"http://{image.registry}/v2/{image.repository}"
        manifest, digest = self._manifest(
            reference, f"{base}/manifests/{image.digest or image.tag}"
        )
        if any(kind in manifest.get("mediaType", "") for kind in _INDEXES):
            entry = manifest["manifests"][0]
            manifest, _ = self._manifest(reference, f"{base}/manifests/{entry['digest']}")
        blobs = [manifest["config"], *manifest["layers"]]
        for blob in blobs:
            self._fetch(reference, f"{base}/blobs/{blob['digest']}", blob)
        size = sum(int(blob["size"]) for blob in blobs)
        return self._land(image.name, image.tag if not image.digest else None, digest, blobs, size)

    def remove(self, reference: str) -> None:
        with self._lock:
            found = self._find(reference)
            if found is not None:  # like CRI: every name of that image goes with it
                del self._images[found.id]

    def filesystem_usage(self) -> FilesystemUsage:
        with self._lock:
            return FilesystemUsage(sum(self._blobs.values()))

    def close(self) -> None:
        self._session.close()

    def _manifest(self, reference: str, url: str) -> tuple[dict[str, Any], str]:
        response = self._get(reference, url, {"Accept": ACCEPT})
        body = response.content
        digest = response.headers.get("Docker-Content-Digest")
        return json.loads(body), digest or f"sha256:{hashlib.sha256(body).hexdigest()}"

    def _fetch(self, reference: str, url: str, blob: dict[str, Any]) -> None:
        with self._lock:
            if blob["digest"] in self._blobs:
                return
        received = 0
        with self._get(reference, url, stream=True) as response:
            for chunk in response.iter_content(_CHUNK):
                received += len(chunk)
        if received != int(blob["size"]):
            raise PullFailed(
                reference,
                FailureKind.TRANSIENT,
                f"blob {blob['digest']}: {received} bytes of {blob['size']}",
            )
        with self._lock:
            self._blobs[blob["digest"]] = received

    def _get(
        self, reference: str, url: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        try:
            response = self._session.get(url, headers=headers, stream=stream, timeout=self._timeout)
        except requests.RequestException as error:
            raise PullFailed(reference, FailureKind.TRANSIENT, f"{url}: {error}") from None
        if response.status_code == 200:
            return response
        response.content  # noqa: B018 - read to the end, so the connection serves the next
        # As containerd passes the registry's answer on: a 404 is "not found", for good.
        status = response.status_code
        kind = FailureKind.PERMANENT if status in (401, 403, 404) else FailureKind.TRANSIENT
        words = "not found" if status == 404 else response.reason
        raise PullFailed(reference, kind, f"{url}: {status} {words}")

    def _land(
        self, name: str, tag: str | None, digest: str, blobs: list[dict[str, Any]], size: int
    ) -> str:
        image_id = str(blobs[0]["digest"])  # the config's digest, as CRI names an image
        with self._lock:
            held = self._images.setdefault(image_id, HeldImage(image_id, size))
            held.digests.add(f"{name}@{digest}")
            if tag:
                named = f"{name}:{tag}"
                for other in self._images.values():  # a tag names one image: it moves here
                    other.tags.discard(named)
                held.tags.add(named)
        return image_id

    def _find(self, reference: str) -> HeldImage | None:
        return next(
            (i for i in self._images.values() if reference in i.tags or reference in i.digests),
            None,
        )
