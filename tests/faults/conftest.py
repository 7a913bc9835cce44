"""Fault drills: the real parts broken on purpose, and the figures each drill measured.

Every drill records what it observed with the ``drill`` fixture; a drill that passes writes
them to the results file (see drills.py). Nothing here writes docs/: ``python -m
tests.faults.report`` regenerates docs/RELIABILITY.md from those results on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator

import pytest
from drills import Drill, save


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Iterator[Drill]:
    doc = (request.function.__doc__ or "").strip().splitlines()
    current = Drill(request.node.name, doc[0] if doc else "", request.node.nodeid)
    started = time.monotonic()
    yield current
    current.seconds = round(time.monotonic() - started, 1)
    if request.node.stash.get(_PASSED, False):
        save(current)
