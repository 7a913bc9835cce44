"""Fault drills: the real parts broken on purpose, and the figures each drill measured.

Every drill records what it measured with the ``drill`` fixture; when the whole folder has run,
the figures are written to docs/RELIABILITY.md, so the document always comes from a committed
command (``./scripts/test tests/faults``) and never from hand-copied numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from drills import Drill

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "docs" / "RELIABILITY.md"


_drills: list[Drill] = []


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Iterator[Drill]:
    doc = (request.function.__doc__ or "").strip().splitlines()
    current = Drill(request.node.name, doc[0] if doc else "", request.node.nodeid)
    started = time.monotonic()
    yield current
    current.seconds = time.monotonic() - started
    _drills.append(current)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Rewrite the report only after a full, green run of every drill."""
    if exitstatus != 0 or not _every_drill_ran(session):
        return
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(_render(_drills))


def _every_drill_ran(session: pytest.Session) -> bool:
    """Every drill defined in this folder ran (a selection of them rewrites nothing)."""
    defined = {
        f"{path.name}::{name}"
        for path in Path(__file__).parent.glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.MULTILINE)
    }
    ran = {drill.nodeid.rsplit("/", 1)[-1] for drill in _drills}
    return bool(defined) and defined <= ran


def _render(drills: list[Drill]) -> str:
    lines = [
        "# Reliability",
        "",
        f"Written by `./scripts/test tests/faults` on {datetime.date.today()} "
        f"({platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "Each drill breaks a real part (a worker process, Redis, NATS, the registry, the API",
        "double) and checks that nothing is lost; the figures are what that run measured.",
        "",
    ]
    for drill in sorted(drills, key=lambda d: d.name):
        lines += [
            f"## {drill.what or drill.name}",
            "",
            f"`{drill.name}` ({drill.seconds:.1f} s)",
            "",
        ]
        lines += [f"- {key}: {value}" for key, value in drill.figures.items()]
        lines.append("")
    return "\n".join(lines)
