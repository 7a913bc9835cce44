"""The chart's first install as chart/README's Install section tells it.

scripts/build-image is run with a stand-in docker client that records its arguments (the real
build and push are in tests/e2e/test_image.py); the README's commands are checked against the
chart rendered by the real helm: the repository it says to set reaches every container, the
namespace label it says to add is the level the worker's pod needs, and the exec target exists.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from chart_helpers import CHART, REPO, Rendered, template

README = (CHART / "README.md").read_text()
INSTALL = README[README.index("## Install") : README.index("### Container runtime")]
REPOSITORY = "registry.example.com/platform/warm-images"


def build_image(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """scripts/build-image with a docker stand-in; the docker commands it ran, one per line."""
    calls = tmp_path / "calls"
    stub = tmp_path / "docker"
    stub.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    stub.chmod(0o755)
    result = subprocess.run(
        [str(REPO / "scripts" / "build-image"), *args],
        env={**os.environ, "DOCKER": str(stub)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


# The commit scripts/build-image puts in the image's OCI revision label.
REVISION = (
    subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    or "unknown"  # the script's own fallback outside a git checkout
).strip()


def test_build_image_tags_with_the_charts_app_version_and_pushes_to_the_registry(
    tmp_path: Path,
) -> None:
    app_version = re.search(r'appVersion: "?([^"\n]+)', (CHART / "Chart.yaml").read_text())
    assert app_version
    image = f"registry.example.com/platform/warm-images:{app_version.group(1)}"
    result, calls = build_image(
        tmp_path, "--registry", "registry.example.com/platform/", "--push", "--base", "deb:1",
        "--", "--network", "host",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert calls == [
        f"build --tag {image} --build-arg REVISION={REVISION} --build-arg BASE=deb:1"
        " --network host .",
        f"push {image}",
    ]
    assert f"--set image.repository={REPOSITORY}" in result.stdout


def test_build_image_without_a_registry_builds_locally_and_refuses_to_push(
    tmp_path: Path,
) -> None:
    result, calls = build_image(tmp_path, "--tag", "dev")
    assert result.returncode == 0
    assert calls == [f"build --tag warm-images:dev --build-arg REVISION={REVISION} ."]
    result, _ = build_image(tmp_path, "--push")
    assert result.returncode == 2 and "--push needs --registry" in result.stderr
    result, _ = build_image(tmp_path, "--regsitry", "x")
    assert result.returncode == 2 and "unknown argument --regsitry" in result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == calls  # no mistake reached docker


@pytest.fixture(scope="module")
def installed(helm: Path) -> Rendered:
    """The chart rendered with what the Install section says to set."""
    result = template(helm, "--set", f"image.repository={REPOSITORY}")
    assert result.returncode == 0, result.stderr
    return Rendered.parse("install", result.stdout)


def test_the_repository_the_readme_sets_runs_every_component(installed: Rendered) -> None:
    assert f"--set image.repository={REPOSITORY}" in INSTALL.replace("\\\n  ", "")
    images = {
        container["image"]
        for _, spec in installed.pod_specs()
        for container in spec.get("containers", []) + spec.get("initContainers", [])
        if "warm-images" in container["image"]
    }
    assert images and all(image.startswith(f"{REPOSITORY}:") for image in images), images


def test_the_namespace_label_is_what_the_workers_host_paths_need(installed: Rendered) -> None:
    assert "kubectl label namespace warm-images pod-security.kubernetes.io/enforce=privileged" in (
        INSTALL
    )
    worker = installed.get("DaemonSet", "worker")["spec"]["template"]["spec"]
    host_paths = [volume for volume in worker["volumes"] if "hostPath" in volume]
    # baseline (and restricted) forbid any hostPath volume: only "privileged" admits the worker.
    assert any(volume["hostPath"].get("type") == "Socket" for volume in host_paths)
    assert all(not c["securityContext"].get("privileged") for c in worker["containers"])


def test_the_readme_checks_after_install_name_real_objects(installed: Rendered) -> None:
    assert "helm test warm --namespace warm-images" in INSTALL
    exec_line = re.search(r"kubectl -n warm-images exec deploy/(\S+) -- (celery .+)", INSTALL)
    assert exec_line and exec_line.group(2) == "celery -A tasks warm-status"
    assert installed.find("Deployment", exec_line.group(1)) is not None
    tests = [p for p in installed.of_kind("Pod") if "helm.sh/hook" in p["metadata"]["annotations"]]
    assert [p["metadata"]["annotations"]["helm.sh/hook"] for p in tests] == ["test"]
