"""What ships: the product's packages, and not the development tools beside them."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
PRODUCT = {"tasks", "watcher", "worker", "beat"}


def test_only_the_product_packages_are_installed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    found = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(REPO), include=found["include"])

    assert {package.split(".")[0] for package in packages} == PRODUCT


def test_localcluster_still_imports_from_the_checkout() -> None:
    import localcluster

    assert Path(localcluster.__file__).resolve().is_relative_to(REPO)
