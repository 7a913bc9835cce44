"""What fault drills measured, and the results file they write it to.

A module of its own, not conftest.py: test modules and ``python -m tests.faults.report`` import
it, and several test folders have a conftest.py, so "from conftest import" would find whichever
was imported first.

Each drill that passes writes its figures into RESULTS (under tmp/artifacts, never into docs/):
a test run leaves the documentation alone, and ``python -m tests.faults.report`` turns the
results into docs/RELIABILITY.md on purpose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tmp" / "artifacts" / "reliability.json"


@dataclass
class Drill:
    name: str
    what: str = ""
    nodeid: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, key: str, value: object) -> None:
        self.figures[key] = str(value)


def save(drill: Drill, path: Path = RESULTS) -> None:
    """Add ``drill`` to the results file, replacing that drill's previous result."""
    results = {item.name: item for item in load(path)}
    results[drill.name] = drill
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps([asdict(item) for item in results.values()], indent=1))
    partial.replace(path)  # a reader never sees half a file


def load(path: Path = RESULTS) -> list[Drill]:
    if not path.exists():
        return []
    return [Drill(**item) for item in json.loads(path.read_text())]
