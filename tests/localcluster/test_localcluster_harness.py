from __future__ import annotations

import pytest

from localcluster.harness import unavailable


def test_a_missing_part_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dockerd: CI must provide it"):
        unavailable("dockerd")


def test_a_missing_part_skips_on_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dockerd"):
        unavailable("dockerd")
