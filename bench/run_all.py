"""Run every benchmark under bench/ and write docs/PERFORMANCE.md from what they print.

Each ``bench/bench_*.py`` is a standalone script that measures the product beside its baseline
in the same run and prints its own table; this runner only adds the machine (and how busy it
was), the commit, the number of rounds and each exact command, so every figure in the document
comes from a committed command.

    python bench/run_all.py                 # all benchmarks, 15 alternating rounds each
    python bench/run_all.py pull            # only bench_pull.py
    python bench/run_all.py --rounds 20     # rounds for every benchmark that alternates sides

A benchmark takes ``--rounds`` when it alternates the product and its baseline; the others
measure one window (idle workers) or one large run (watcher, fan-out), as their sections say.
Run it on a machine nobody else is using: the load average at the start is printed to show it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUTPUT = REPO / "docs" / "PERFORMANCE.md"


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if "model name" in line),
        platform.processor() or "unknown CPU",
    )
    kib = next((line.split()[1] for line in _lines("/proc/meminfo") if "MemTotal" in line), "0")
    gib = int(kib) // 2**20
    return f"{os.cpu_count()} x {cpu}, {gib} GiB, Python {platform.python_version()}"


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def takes_rounds(script: Path) -> bool:
    return '"--rounds"' in script.read_text()


def commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def run(script: Path, rounds: int) -> str:
    args = ["--rounds", str(rounds)] if takes_rounds(script) else []
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    output = proc.stdout.strip() or "(no output)"
    if proc.returncode != 0:
        output += f"\n\nFAILED with exit code {proc.returncode}:\n{proc.stderr.strip()[-2000:]}"
    command = " ".join(["python", f"bench/{script.name}", *args])
    return f"## {script.stem}\n\n`{command}` ({seconds:.0f} s)\n\n```\n{output}\n```\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only benchmarks whose name contains these")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    scripts = sorted(BENCH.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(name in s.stem for name in args.only)]
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    alternating = ", ".join(s.stem for s in scripts if takes_rounds(s)) or "none"
    sections = [run(script, args.rounds) for script in scripts]
    header = (
        "# Performance\n\n"
        f"Written by `python bench/run_all.py` on {datetime.date.today()}, commit {commit()}.\n"
        f"Machine: {machine()}; load average at the start (1/5/15 min): {load}.\n"
        f"Rounds: {args.rounds} alternating rounds (product and baseline, swapping which goes "
        f"first) in {alternating}; the other benchmarks say what they measured.\n"
        "Every figure is printed beside its baseline, measured in the same run.\n"
    )
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text("\n".join([header, *sections]))
    print(OUTPUT.read_text())
    return 0 if all("FAILED with exit code" not in s for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
