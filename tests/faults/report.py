"""``python -m tests.faults.report``: run the fault drills, then write docs/RELIABILITY.md.

The document is regenerated on purpose by this command, never as a side effect of a test
run: the drills only write what they observed to a results file (tests/faults/drills.py), and
this command renders that file. ``--results-only`` renders the results already there (of a CI
run, say) without running anything. Either way the document is written only when every drill
defined in tests/faults has a result, so it never mixes a partial run with an old one silently.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from tasks.settings import load_settings
from tests.faults.drills import REPO, RESULTS, Drill, load
from watcher.catalog_guard import CHECK_INTERVAL
from worker.reconcile import RECONNECT_JITTER

REPORT = REPO / "docs" / "RELIABILITY.md"
DRILLS = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report", description=__doc__)
    parser.add_argument("--results-only", action="store_true", help="render without running")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--output", type=Path, default=REPORT, help="the document to write")
    args = parser.parse_args(argv)
    if not args.results_only:
        args.results.unlink(missing_ok=True)  # this run's results only
        run = subprocess.run([sys.executable, "-m", "pytest", str(DRILLS), "-q"], cwd=REPO)
        if run.returncode != 0:
            print(f"report: the drills failed (exit {run.returncode}); nothing written")
            return 1
    drills = load(args.results)
    missing = sorted(defined_drills() - {_base(drill.name) for drill in drills})
    if missing:
        print(f"report: no result for {', '.join(missing)} in {args.results}; run the drills")
        return 1
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(render(drills))
    print(f"report: wrote {args.output} from {len(drills)} drill results")
    return 0


def defined_drills() -> set[str]:
    return {
        name
        for path in DRILLS.glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.MULTILINE)
    }


def _base(name: str) -> str:
    """A parametrized drill's function name: "test_x[redis]" -> "test_x"."""
    return name.split("[", 1)[0]


def render(drills: list[Drill]) -> str:
    lines = [
        "# Reliability",
        "",
        f"Written by `python -m tests.faults.report` on {datetime.date.today()} "
        f"({platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "Each drill breaks a real part (a worker process, Redis, RabbitMQ, NATS, the registry,",
        "the API double) and checks that nothing is lost; the figures are what that run",
        "observed, read from the servers, the runtime and the API double's own counts.",
        "",
        *_defaults(),
        *_redis_without_persistence(),
        *_nats_without_persistence(),
    ]
    for drill in sorted(drills, key=lambda d: d.name):
        lines += [f"## {drill.what or drill.name}", "", f"`{drill.name}` ({drill.seconds:.1f} s)"]
        lines += ["", *(f"- {key}: {value}" for key, value in drill.figures.items()), ""]
    return "\n".join(lines)


def _defaults() -> list[str]:
    settings = load_settings({})
    return [
        "## Settings",
        "",
        "The drills run the product's defaults; a drill that changes one lists it in its",
        "figures. The defaults that decide how the product recovers:",
        "",
        f"- Redis visibility timeout (`WARM_BROKER_VISIBILITY_TIMEOUT`): "
        f"{settings.broker.visibility_timeout} s",
        f"- periodic re-warm (`WARM_REWARM_INTERVAL`): {settings.rewarm.interval:.0f} s, "
        f"paced over `WARM_REWARM_WINDOW` {settings.rewarm.window:.0f} s",
        f"- pull timeout {settings.runtime.pull_timeout:.0f} s, "
        f"{settings.runtime.max_retries} retries, backoff capped at "
        f"{settings.runtime.retry_backoff_max} s",
        "- a worker reconciles its slice at once when it starts, and within "
        f"{RECONNECT_JITTER:.0f} s (random) when its broker connection comes back",
        "",
        "Only this machine's own settings are given: `WARM_DISK_BUDGET_PERCENT=99` (its disk",
        "is fuller than the default budget) and probe ports 0 (drills run side by side).",
        "",
    ]


def _redis_without_persistence() -> list[str]:
    return [
        "## What a Redis without persistence can lose",
        "",
        "The chart runs Redis without persistence. Redis holds only messages in flight; the",
        "catalog, each node's slice and status, and the beat lease live in NATS, and the images",
        "on the nodes. A Redis restarted empty loses:",
        "",
        "- pull and re-warm tasks queued and not yet delivered, and those a worker had taken",
        "  but not acknowledged: each node's reconcile when its connection comes back re-derives",
        "  them from its slice, and the next periodic re-warm does for any node it missed;",
        "- the retry count of a pull that was failing: it starts again from the first attempt;",
        "- a manual `celery -A tasks rewarm --image REF` not yet delivered: the periodic re-warm",
        "  covers the catalog, but an image that failed for good is retried only when asked,",
        "  so that command must be run again;",
        "- the task history Flower shows.",
        "",
        "It cannot lose an image a node holds, the catalog, a node's slice, its status, or which",
        "beat is the leader. The drills below restart it empty to show this.",
        "",
    ]


def _nats_without_persistence() -> list[str]:
    lease_ttl = load_settings({}).rewarm.lock_ttl
    return [
        "## What a NATS without persistence can lose",
        "",
        "The chart runs NATS without persistence too. NATS holds the catalog (each image and",
        "each node's slice), each node's status, the beat lease and the events. A NATS",
        "restarted empty loses:",
        "",
        f"- the catalog: the leading watcher looks at its bucket every {CHECK_INTERVAL:.0f} s",
        "  (created anew, or its revision gone back), writes it again and re-warms every node;",
        "- each node's status: that re-warm writes it again (a worker reads its record back",
        "  after its NATS connection comes back rather than trusting what it wrote before);",
        f"- the beat lease: its holder takes it again within {lease_ttl / 3:.0f} s (a third of",
        "  `WARM_BEAT_LOCK_TTL`); a standby trying in between may take it too, so one re-warm",
        "  may be sent twice, which costs each node one diff;",
        "- pull and catalog events published while it restarts: they are not stored, and",
        "  `warm-status` reads the status records, not the events.",
        "",
        "It cannot lose an image a node holds (workers never remove images) or a pull in",
        "flight (tasks go through the broker). The drill below restarts it empty.",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
