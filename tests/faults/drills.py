"""What one fault drill measured. A module of its own, not conftest.py: test modules import
it, and several test folders have a conftest.py, so "from conftest import" would find whichever
was imported first."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Drill:
    name: str
    what: str = ""
    nodeid: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, key: str, value: object) -> None:
        self.figures[key] = str(value)
