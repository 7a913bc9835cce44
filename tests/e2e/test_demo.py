"""The README's demo as a user runs it: ``python -m localcluster | tee log`` in its own process
group, read only through what it prints, kubectl, CRI and HTTP, and stopped by a signal.

What must hold: kubectl works against it (nodes listed, a created Deployment's image warm on
every node's containerd), each process serves its own /metrics and /healthz, and Ctrl-C
(SIGINT to the whole group, tee included), SIGTERM or SIGHUP leave no process, mount or work
directory behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcluster.demo import NODES, SPARE
from localcluster.harness import wait_for
from localcluster.product import REPO_ROOT

from .conftest import CriProbe

pytestmark = pytest.mark.e2e

START_TIMEOUT = 240.0  # three containerds, nine processes, on a shared 2-core machine
STOP_TIMEOUT = 120.0
PROBE_LINE = re.compile(r"^\s+(\S+)\s+metrics (\S+)\s+health (\S+)(?:\s+runtime (\S+))?$", re.M)


def _default_signals() -> None:
    """A shell started in the background inherits SIGINT ignored; a terminal's demo has not."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@dataclass
class Probe:
    metrics: str
    health: str
    runtime: str | None


class DemoRun:
    """``python -m localcluster`` in a new session, its output in ``log``."""

    def __init__(self, log: Path, *, through_tee: bool) -> None:
        self.log = log
        python = f"{sys.executable} -m localcluster"
        argv = ["sh", "-c", f'{python} | tee "{log}"'] if through_tee else python.split()
        self.process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if through_tee else log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        def printed() -> bool:
            assert self.process.poll() is None, f"the demo exited:\n{self.output()}"
            return text in self.output()

        wait_for(printed, timeout, f"the demo to print {text!r}", self.output)

    @property
    def workdir(self) -> Path:
        self.wait_for_output("work directory ")
        found = re.search(r"work directory (\S+)", self.output())
        assert found, self.output()
        return Path(found.group(1))

    def printed(self, pattern: str) -> str:
        found = re.search(pattern, self.output())
        assert found, f"the demo did not print {pattern!r}:\n{self.output()}"
        return found.group(1)

    def probes(self) -> dict[str, Probe]:
        return {m[0]: Probe(m[1], m[2], m[3] or None) for m in PROBE_LINE.findall(self.output())}

    def stop(self, signum: signal.Signals, *, group: bool) -> float:
        """Send ``signum`` (to the whole process group, as a terminal does); seconds to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)
        self.process.wait(STOP_TIMEOUT)
        # The shell exits with its pipeline; the demo itself may still be cleaning up.
        wait_for(lambda: not _processes_mentioning("localcluster", self.process.pid), 30, "exit")
        return time.monotonic() - started


def _processes_mentioning(text: str, session: int | None = None) -> list[str]:
    """Command lines of live processes that mention ``text`` (or run in ``session``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            in_session = session is not None and os.getsid(int(entry.name)) == session
        except (OSError, ProcessLookupError):
            continue
        if text in cmdline and (session is None or in_session):
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(workdir: Path, output: str) -> None:
    """No work directory, process or mount of the demo's, within a few seconds of its exit: a
    daemon whose start a signal cut short is killed by the kernel when the demo exits
    (setpriv --pdeathsig), which is not instantaneous."""

    def left() -> list[str]:
        mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
                  if str(workdir) in line]  # fmt: skip
        return [*([str(workdir)] if workdir.exists() else []), *mounts,
                *_processes_mentioning(str(workdir))]  # fmt: skip

    wait_for(lambda: not left(), 10, "nothing left", lambda: f"{left()}\n{output[-2000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    run = DemoRun(tmp_path_factory.mktemp("demo") / "log", through_tee=True)
    try:
        run.wait_for_output("Press Ctrl-C to stop everything.")
        yield run
    finally:
        if run.process.poll() is None:
            run.stop(signal.SIGTERM, group=True)


def test_kubectl_lists_the_nodes_and_a_created_deployment_gets_warm_everywhere(
    demo: DemoRun, kubectl: Path
) -> None:
    env = {**os.environ, "KUBECONFIG": demo.printed(r"export KUBECONFIG=(\S+)")}

    def run(*args: str) -> str:
        result = subprocess.run(
            [str(kubectl), *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    rows = [line.split() for line in run("get", "nodes").splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [(node, "Ready") for node in NODES]
    # The very command the demo tells the user to try.
    command = demo.printed(r"\n\s+\S*kubectl (create deployment hello \S+)\n")
    image = command.split("--image=", 1)[1]
    assert image.endswith(f"{SPARE[0]}:v1")
    assert "created" in run(*command.split())
    probes = [CriProbe(p.runtime) for p in demo.probes().values() if p.runtime]
    assert len(probes) == len(NODES)
    try:
        seconds = wait_for(
            lambda: all(image in probe.tags() for probe in probes), 120, f"{image} on every node"
        )
    finally:
        for probe in probes:
            probe.close()
    print(f"kubectl create deployment -> warm on {len(NODES)} nodes in {seconds:.2f}s")
    assert f"{image}" in run("get", "deployment", "hello", "-o", "wide")


def test_flower_shows_the_demos_first_warm_up(demo: DemoRun) -> None:
    """Flower starts before the watcher and workers, so the first tasks are in it: a re-warm
    of each node as it joins, ended in SUCCESS (task events are on from the start)."""
    url = demo.printed(r"Flower:\s+(\S+)")
    user = demo.printed(r"Flower:\s+\S+\s+\(user (\S+), password \S+\)")
    password = demo.printed(r"Flower:\s+\S+\s+\(user \S+, password (\S+)\)")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    seen: set[str] = set()

    def first_warm_up() -> bool:
        request = urllib.request.Request(f"{url}/api/tasks?taskname=warm.rewarm_node")
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as answer:
            tasks = json.load(answer).values()
        seen.update(t["worker"].removeprefix("warm@") for t in tasks if t["state"] == "SUCCESS")
        return seen == set(NODES)

    wait_for(first_warm_up, START_TIMEOUT, "the first re-warm of every node in Flower")


def test_each_process_serves_its_own_metrics_and_health_ports(demo: DemoRun) -> None:
    probes = demo.probes()
    assert set(probes) == {*(f"worker-{node}" for node in NODES), "watcher"}
    urls = [url for probe in probes.values() for url in (probe.metrics, probe.health)]
    ports = {url.split(":")[2].split("/")[0] for url in urls}
    assert len(ports) == len(urls), f"shared ports: {urls}"
    for name, probe in probes.items():
        with urllib.request.urlopen(probe.metrics, timeout=10) as answer:
            assert answer.status == 200 and b"warm_" in answer.read(), name
        with urllib.request.urlopen(probe.health, timeout=10) as answer:
            assert answer.status == 200 and b'"healthy": true' in answer.read(), name
    logs = demo.workdir / "logs"
    for log in logs.glob("*.log"):
        assert "address already in use" not in log.read_text(errors="replace").lower(), log


def test_ctrl_c_through_tee_stops_everything_and_removes_the_work_directory(
    demo: DemoRun,
) -> None:
    workdir = demo.workdir
    assert sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()) > 20 * 2**20
    seconds = demo.stop(signal.SIGINT, group=True)
    print(f"Ctrl-C to everything stopped and removed: {seconds:.1f}s")
    assert_nothing_left(workdir, demo.output())


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=["SIGTERM-to-the-demo", "SIGHUP-to-the-group"],
)
def test_a_signal_during_start_up_leaves_nothing_behind(
    signum: signal.Signals, group: bool, tmp_path: Path
) -> None:
    run = DemoRun(tmp_path / "log", through_tee=group)
    workdir = run.workdir
    # Mid-start: the registry holds the samples and a node's containerd runs.
    wait_for(lambda: (workdir / "node-1" / "containerd.sock").exists(), START_TIMEOUT, "node-1")
    run.stop(signum, group=group)
    assert_nothing_left(workdir, run.output())
