"""OCI layouts are deterministic per seed, distinct across seeds, and valid for skopeo."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from localcluster import build_oci_layout, free_port
from localcluster.harness import unavailable
from localcluster.packages import which


def manifest_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def test_same_seed_same_digest_distinct_seed_distinct(tmp_path: Path) -> None:
    build_oci_layout(tmp_path / "a", "v1", [0.2, 0.1], seed="one")
    build_oci_layout(tmp_path / "b", "v1", [0.2, 0.1], seed="one")
    build_oci_layout(tmp_path / "c", "v1", [0.2, 0.1], seed="two")

    assert manifest_digest(tmp_path / "a") == manifest_digest(tmp_path / "b")
    assert manifest_digest(tmp_path / "a") != manifest_digest(tmp_path / "c")
    layers_a = set((tmp_path / "a" / "blobs" / "sha256").iterdir())
    assert len(layers_a) == 4  # two layers, config, manifest
    assert not list((tmp_path / "a" / "blobs").glob(".*partial"))


def test_zero_sized_layers_still_differ_by_seed(tmp_path: Path) -> None:
    build_oci_layout(tmp_path / "a", "v1", [0], seed="one")
    build_oci_layout(tmp_path / "b", "v1", [0], seed="two")
    assert manifest_digest(tmp_path / "a") != manifest_digest(tmp_path / "b")


def test_layout_is_valid_for_skopeo(tmp_path: Path, system_packages: None) -> None:
    skopeo = which("skopeo")
    if skopeo is None:
        unavailable("skopeo is not installed")
    build_oci_layout(tmp_path / "img", "v1", [0.1, 0.1], seed="skopeo")
    proc = subprocess.run(
        [skopeo, "inspect", f"oci:{tmp_path / 'img'}:v1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(proc.stdout)
    assert info["Digest"] == manifest_digest(tmp_path / "img")
    assert len(info["Layers"]) == 2
    assert info["Labels"]["localcluster.seed"] == "skopeo"


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
