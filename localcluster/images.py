"""Test images without Docker: OCI layouts written with the standard library, pushed over HTTP.

Every image gets its own seeded random content. containerd stores blobs by digest, so two test
images with the same bytes would share layers and the second "pull" would finish in milliseconds
without touching the registry; a distinct seed per image keeps pulls honest. Layers are streamed
to disk while hashed, so a 100 MiB image does not need several copies of itself in memory.

push_image() speaks the registry v2 HTTP API directly (urllib, basic auth when asked), so tests
and benchmarks need neither skopeo nor a Docker daemon.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

_MIB = 1024 * 1024
_CHUNK = _MIB
_HTTP_TIMEOUT = 300.0


@dataclass(frozen=True)
class PushedImage:
    """An image now in a registry."""

    ref: str  # "127.0.0.1:5000/test/app:v1"
    digest: str  # manifest digest, "sha256:..."
    size: int  # compressed bytes of its layers, what a pull downloads

    @property
    def digest_ref(self) -> str:
        """The same image by digest: "127.0.0.1:5000/test/app@sha256:..."."""
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int

    def descriptor(self, media_type: str) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size}


def build_oci_layout(outdir: Path, tag: str, layer_sizes_mib: Sequence[float], seed: str) -> None:
    """Write an OCI image layout (oci-layout, index.json, blobs/) holding one image.

    Each layer is a gzip'd tar with one file data/layer<N>.bin of random bytes drawn from
    `seed`: the same seed gives the same digests, every distinct seed gives distinct content.
    """
    outdir = Path(outdir)
    (outdir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layers, diff_ids = [], []
    for index, size_mib in enumerate(layer_sizes_mib):
        blob, diff_id = _write_layer(outdir, f"{seed}/{index}", index, int(size_mib * _MIB))
        layers.append(blob.descriptor(LAYER_MEDIA_TYPE))
        diff_ids.append(diff_id)
    config = _write_json_blob(outdir, _image_config(tag, seed, diff_ids))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(CONFIG_MEDIA_TYPE),
        "layers": layers,
    }
    manifest_blob = _write_json_blob(outdir, manifest)
    entry = manifest_blob.descriptor(MANIFEST_MEDIA_TYPE)
    entry["platform"] = {"architecture": "amd64", "os": "linux"}
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_doc = {"schemaVersion": 2, "manifests": [entry]}
    (outdir / "index.json").write_text(json.dumps(index_doc))
    (outdir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def push_image(
    registry_host: str,
    repository: str,
    tag: str,
    *,
    size_mib: float = 1.0,
    layers: int = 1,
    seed: str | None = None,
    auth: tuple[str, str] | None = None,
    workdir: Path | None = None,
) -> PushedImage:
    """Build an image of `layers` layers totalling `size_mib` and push it as repository:tag.

    `seed` defaults to a fresh uuid, so each call pushes content no runtime has seen. The
    layout is built under `workdir` (kept, e.g. for skopeo) or in a temporary directory.
    """
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    seed = seed if seed is not None else uuid.uuid4().hex
    sizes = [size_mib / layers] * layers
    if workdir is not None:
        layout = Path(workdir) / f"{repository.replace('/', '_')}_{tag}_{seed[:12]}"
        build_oci_layout(layout, tag, sizes, seed)
        return push_oci_layout(layout, registry_host, repository, tag, auth=auth)
    with tempfile.TemporaryDirectory(prefix="lc-image-") as tmp:
        build_oci_layout(Path(tmp), tag, sizes, seed)
        return push_oci_layout(Path(tmp), registry_host, repository, tag, auth=auth)


def push_oci_layout(
    layout: Path,
    registry_host: str,
    repository: str,
    tag: str,
    *,
    auth: tuple[str, str] | None = None,
) -> PushedImage:
    """Push the single image of an OCI layout through the registry v2 HTTP API."""
    client = _RegistryClient(registry_host, repository, auth)
    entry = json.loads((Path(layout) / "index.json").read_text())["manifests"][0]
    manifest_bytes = _blob_path(layout, entry["digest"]).read_bytes()
    manifest = json.loads(manifest_bytes)
    for desc in [manifest["config"], *manifest["layers"]]:
        client.upload_blob(_blob_path(layout, desc["digest"]), desc["digest"], desc["size"])
    digest = client.put_manifest(tag, manifest_bytes, entry["mediaType"])
    if digest != entry["digest"]:
        raise RuntimeError(f"registry stored manifest {digest}, expected {entry['digest']}")
    size = sum(int(layer["size"]) for layer in manifest["layers"])
    return PushedImage(ref=f"{registry_host}/{repository}:{tag}", digest=digest, size=size)


# --- building -------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """Passes writes through to `sink` while counting and hashing them."""

    def __init__(self, sink: BinaryIO | io.RawIOBase | gzip.GzipFile) -> None:
        super().__init__()
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.sink.write(view)
        return view.nbytes


class _SeededReader(io.RawIOBase):
    """`size` random bytes from `seed`, produced on demand for tarfile to copy."""

    def __init__(self, seed: str, size: int) -> None:
        super().__init__()
        self._chunks = _seeded_chunks(seed, size)
        # A view, so that handing out a chunk in tarfile's 16 KiB reads copies nothing.
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(next(self._chunks, b""))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _seeded_chunks(seed: str, size: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    while size > 0:
        count = min(size, _CHUNK)
        yield rng.randbytes(count)
        size -= count


def _write_layer(outdir: Path, seed: str, index: int, size: int) -> tuple[_Blob, str]:
    """Stream one gzip'd tar layer to blobs/; return its blob and its diff_id."""
    partial = outdir / "blobs" / f".layer{index}.partial"
    with partial.open("wb") as out:
        compressed = _HashingWriter(out)
        # mtime=0 and no file name in the gzip header: same seed, same digest. Level 0 stores
        # the data: random bytes do not compress (deflate would store them anyway), and
        # compressing 100 MiB would take seconds for nothing.
        with gzip.GzipFile(
            filename="", fileobj=compressed, mode="wb", compresslevel=0, mtime=0
        ) as gz:
            raw = _HashingWriter(gz)
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_layer_files(tar, seed, index, size)
    blob = _Blob(f"sha256:{compressed.sha256.hexdigest()}", compressed.size)
    partial.replace(_blob_path(outdir, blob.digest))
    return blob, f"sha256:{raw.sha256.hexdigest()}"


def _add_layer_files(tar: tarfile.TarFile, seed: str, index: int, size: int) -> None:
    folder = tarfile.TarInfo("data")
    folder.type = tarfile.DIRTYPE
    folder.mode = 0o755
    tar.addfile(folder)
    payload = tarfile.TarInfo(f"data/layer{index}.bin")
    payload.size = size
    payload.mode = 0o644
    tar.addfile(payload, _SeededReader(seed, size))


def _image_config(tag: str, seed: str, diff_ids: list[str]) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            # The seed in the config also makes zero-sized images distinct.
            "Labels": {"localcluster.tag": tag, "localcluster.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"localcluster layer {i}"} for i in range(len(diff_ids))],
    }


def _write_json_blob(outdir: Path, doc: dict[str, Any]) -> _Blob:
    data = json.dumps(doc, sort_keys=True).encode()
    blob = _Blob(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    _blob_path(outdir, blob.digest).write_bytes(data)
    return blob


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return Path(layout) / "blobs" / algorithm / hexdigest


# --- pushing --------------------------------------------------------------------------------


class _RegistryClient:
    """The three calls of the v2 push protocol that an image of blobs and a manifest needs."""

    def __init__(self, host: str, repository: str, auth: tuple[str, str] | None) -> None:
        self.host = host
        self.base = f"http://{host}/v2/{repository}"
        self.headers: dict[str, str] = {}
        if auth is not None:
            # Sent up front: the registry's htpasswd auth is plain basic, no token dance.
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def upload_blob(self, path: Path, digest: str, size: int) -> None:
        if self._has_blob(digest):
            return
        with self._open("POST", f"{self.base}/blobs/uploads/", b"") as resp:
            location = urllib.parse.urljoin(f"http://{self.host}/", resp.headers["Location"])
        separator = "&" if "?" in location else "?"
        target = f"{location}{separator}digest={urllib.parse.quote(digest)}"
        with path.open("rb") as body:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            self._open("PUT", target, body, headers).close()

    def put_manifest(self, tag: str, manifest: bytes, media_type: str) -> str:
        url = f"{self.base}/manifests/{tag}"
        with self._open("PUT", url, manifest, {"Content-Type": media_type}) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def _has_blob(self, digest: str) -> bool:
        try:
            self._open("HEAD", f"{self.base}/blobs/{digest}").close()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def _open(
        self,
        method: str,
        url: str,
        data: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        request = urllib.request.Request(
            url, data=data, method=method, headers={**self.headers, **(headers or {})}
        )
        try:
            return urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "HEAD":
                raise
            detail = exc.read()[:500].decode(errors="replace")
            raise RuntimeError(f"{method} {url}: HTTP {exc.code} {detail}") from exc
