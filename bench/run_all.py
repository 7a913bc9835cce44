"""Run every benchmark under bench/ and write docs/PERFORMANCE.md from what they print.

Each ``bench/bench_*.py`` is a standalone script that measures the product beside its baseline
in the same run and prints its own table; this runner only adds the machine, the command and
the date, so every figure in the document comes from a committed command.

    python bench/run_all.py            # all benchmarks
    python bench/run_all.py pull       # only bench_pull.py
"""

from __future__ import annotations

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


def run(script: Path) -> str:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    output = proc.stdout.strip() or "(no output)"
    if proc.returncode != 0:
        output += f"\n\nFAILED with exit code {proc.returncode}:\n{proc.stderr.strip()[-2000:]}"
    command = f"python bench/{script.name}"
    return f"## {script.stem}\n\n`{command}` ({seconds:.0f} s)\n\n```\n{output}\n```\n"


def main(only: list[str]) -> int:
    scripts = sorted(BENCH.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(name in s.stem for name in only)]
    sections = [run(script) for script in scripts]
    header = (
        "# Performance\n\n"
        f"Written by `python bench/run_all.py` on {datetime.date.today()}.\n"
        f"Machine: {machine()}.\n"
        "Every figure is printed beside its baseline, measured in the same run.\n"
    )
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text("\n".join([header, *sections]))
    print(OUTPUT.read_text())
    return 0 if all("FAILED with exit code" not in s for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
