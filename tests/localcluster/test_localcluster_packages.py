"""System packages: present after ensure_system_packages(), clear errors when missing."""

from __future__ import annotations

import time

import pytest

from localcluster import ensure_system_packages
from localcluster.packages import REQUIRED_BINARIES, missing_binaries, require_binary


def test_everything_present_after_ensure(system_packages: None) -> None:
    assert missing_binaries() == []
    started = time.monotonic()
    ensure_system_packages()  # a no-op now: no apt-get on every test session
    assert time.monotonic() - started < 1.0
    assert all(require_binary(binary) for binary in REQUIRED_BINARIES)


def test_missing_binary_error_says_how_to_install() -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        require_binary("surely-not-a-binary-localcluster")
