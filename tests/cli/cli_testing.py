"""Running the CLI as users do, and answering it in the workers' place."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

from tasks.bus import NatsBus
from tasks.names import rewarm_events_subject

GOOD, BAD = "registry.example/web:v1", "registry.example/typo:v1"


def celery(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, text=True)


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = celery(env, *args)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def report(bus: NatsBus, node: str, revision: int, **fields: object) -> None:
    body = {"node": node, "revision": revision, "pulled": 0, "present": 0, "failed": {}}
    bus.publish(rewarm_events_subject(node), json.dumps({**body, **fields}).encode())
    bus.flush()


def answer_rewarm(
    bus: NatsBus, process: subprocess.Popen[str], **by_node: Mapping[str, object]
) -> None:
    """Wait for the CLI's 'sent' line, then publish each node's report as its worker would."""
    assert process.stdout is not None
    first = process.stdout.readline()
    assert "re-warm sent to" in first, first + (process.stderr.read() if process.stderr else "")
    revision = int(first.rsplit(" ", 1)[1])
    report(bus, next(iter(by_node)), revision - 1)  # an older re-warm's report: not ours
    for node, fields in by_node.items():
        report(bus, node, revision, **fields)
