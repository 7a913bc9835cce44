"""Kubelet Events benchmark: the watcher's watch on Pulled Events, in memory and in speed.

    python bench/bench_kubelet_events.py [--events 100000] [--rounds 15] [--burst 10000]

Why: the warm-hit ratio comes from the kubelet's own Pulled Events, one per container start on
every node: a busy cluster makes 100,000 an hour, and the apiserver keeps an hour of them. A
watcher that kept them (as an informer's cache does) would grow with the cluster's churn; one
that fell behind would report a ratio from the past.

What runs, all real and on loopback: the Kubernetes API double (kmock over HTTP), NATS, Redis
and ``python -m watcher`` on every default setting (it watches events.k8s.io/v1 Events with
``reason=Pulled``, as against an apiserver). Events are put straight into the double's store
and onto its watch bus, as the kubelets' creates would (creating them over HTTP runs at about
20 objects/s on a loaded machine); they are core/v1 Events in the kubelet's real format, in the
wordings of several versions: hits (some repeated, their count raised), misses, and images not
in the catalog (more than the watcher counts one by one).

Measured:

* memory: the resident set (VmRSS, /proc) of the watcher before ``--events`` Events (an hour's
  worth) and after it has counted them all and published its counts, and its peak (VmHWM).
  Baseline, in the same run on the same Events: the official client's SharedInformer on the
  same resource (a cache of every Event), in a process of its own;
* speed, ``--rounds`` alternating rounds: a burst of ``--burst`` Pulled Events, from the moment
  it enters the double until the watcher's own ``warm_watcher_kubelet_events_total`` has counted
  it, with the double's count of the Events it streamed to the watcher (``served``). Baseline:
  the double streaming a burst of the same size to a client that only reads the lines (other
  Events, which the watcher's field selector leaves out), so the figure says which side limits.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_watcher import (
    RAW_CONSUMER,
    Double,
    peak_rss_mb,
    rewarms_sent,
    wait_until,
    watcher_metrics,
)

from localcluster import FakeKubeAPI, ensure_system_packages, free_port, product
from localcluster.manifests import deployment, kubelet_event
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer

NODES = 500
IMAGES = 300  # in the catalog
UNCATALOGED = 500  # distinct images the catalog lacks: past the bound the watcher counts apart
CHUNK = 2000  # Events put into the double per call
SETTLE = 2.0  # seconds between two resident-set readings that must agree within STEADY_MB
STEADY_MB = 0.5
SCRAPE_INTERVAL = 5.0  # seconds between two reads of the watcher's /metrics in the memory phase
PUBLISH_WAIT = 12.0  # seconds for the watcher to publish what it counted (two intervals)
TARGET_MB, TARGET_RATE = 20.0, 5000.0
COUNTED = re.compile(r"^warm_watcher_kubelet_events_total\{outcome=\"\w+\"\} ([0-9.e+]+)$", re.M)
LISTED = re.compile(r'^warm_watcher_relists_total\{kind="Event"\} ([0-9.e+]+)$', re.M)
HIT = 'Container image "{}" already present on machine'
MESSAGES = (
    HIT,
    HIT + " and can be accessed by the pod",
    'Successfully pulled image "{}" in 2.515s',
    'Successfully pulled image "{}" in 1.2s (4.8s including waiting)',
    'Successfully pulled image "{}" in 512ms (1m2.5s including waiting). Image size: 1234 bytes.',
)

NAIVE = r"""
import sys, threading, time
from kubernetes import client, config
from kubernetes.informer import SharedInformer
config.load_kube_config(sys.argv[1])
informer = SharedInformer(client.CoreV1Api().list_event_for_all_namespaces,
                          field_selector="reason=Pulled")
informer.start()
while True:
    print(len(informer.cache.list()), flush=True)
    time.sleep(0.2)
"""


def catalog_image(j: int) -> str:
    return f"registry.example.com/team-{j % 20}/app-{j}:v1"


def pulled(i: int, reason: str = "Pulled") -> dict[str, Any]:
    """Event ``i`` as a kubelet of some version writes it: 70 % hits (a third of them seen
    three times), 25 % misses, 5 % images not in the catalog."""
    kind = i % 20
    image = catalog_image(i * 7 % IMAGES) if kind < 19 else f"docker.io/tools/t{i % UNCATALOGED}:1"
    message = MESSAGES[i % 2] if kind < 14 else MESSAGES[2 + i % 3]
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    count = 3 if kind < 14 and i % 3 == 0 else 1
    body: dict[str, Any] = kubelet_event(
        f"pod-{i}.{i:x}", f"node-{i % NODES}", message.format(image),
        pod_name=f"pod-{i}", at=at.replace("+00:00", "Z"), count=count, reason=reason,
    )  # fmt: skip
    body["metadata"].update(uid=f"00000000-0000-4000-8000-{i:012d}", creationTimestamp=at)
    return body


def counted(port: int) -> float:
    return sum(float(v) for v in COUNTED.findall(watcher_metrics(port)))


def listed(port: int) -> float:
    return sum(float(v) for v in LISTED.findall(watcher_metrics(port)))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Naive:
    """The baseline: the official client's SharedInformer, which keeps every Event."""

    def __init__(self, kubeconfig: Path) -> None:
        argv = [sys.executable, "-c", NAIVE, str(kubeconfig)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.cached = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.cached = int(line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Bench:
    def __init__(self, double: Double, port: int, args: argparse.Namespace) -> None:
        self.double = double
        self.port = port
        self.args = args
        self.next = 0  # the next Event's number: every Event is new

    def emit(self, count: int, reason: str = "Pulled") -> float:
        """``count`` new Events into the double; the epoch time the first entered it."""
        first = 0.0
        for start in range(0, count, CHUNK):
            events = [pulled(self.next + k, reason) for k in range(min(CHUNK, count - start))]
            self.next += len(events)
            entered = self.double.emit("", "events", "ADDED", events)
            first = first or entered
        return first

    def watcher_round(self, logs: Callable[[], str]) -> tuple[float, int, int]:
        """Events/s the watcher counted a burst at; with what the double streamed to it."""
        before, served = counted(self.port), self._served()
        entered = self.emit(self.args.burst)
        done = wait_until(
            lambda: counted(self.port) >= before + self.args.burst, 300, "a burst", logs
        )
        rate = self.args.burst / (done - entered)
        return rate, self._served() - served, int(counted(self.port) - before)

    def raw_round(self) -> float:
        """Events/s the double streams a burst at to a client that only reads lines."""
        rv = self.double.api.call(lambda e: e.rv)
        url = (
            f"{self.double.api.url}/apis/events.k8s.io/v1/events?watch=true&resourceVersion={rv}"
            "&fieldSelector=reason%3DBenchmark"
        )
        reader = subprocess.Popen(
            [sys.executable, "-c", RAW_CONSUMER, url, str(self.args.burst)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "open":
            raise RuntimeError("the raw watch reader did not connect")
        time.sleep(0.5)  # its stream is registered with the double's bus
        entered = self.emit(self.args.burst, reason="Benchmark")
        finished = float(reader.stdout.readline().strip())
        reader.wait(timeout=30)
        return float(self.args.burst) / (finished - entered)

    def _served(self) -> int:
        return self.double.api.served().get("events streamed", 0)


def steady_rss_mb(pid: int, timeout: float = 120) -> float:
    """The resident set once two readings SETTLE apart agree (start-up work done)."""
    deadline, last = time.monotonic() + timeout, rss_mb(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        now = rss_mb(pid)
        if abs(now - last) <= STEADY_MB:
            return now
        last = now
    raise TimeoutError(f"the resident set of process {pid} did not settle in {timeout:.0f}s")


def memory(bench: Bench, watcher: product.ProductProcess, naive: Naive) -> dict[str, float]:
    assert watcher.pid is not None
    events = bench.args.events
    before = {"watcher": steady_rss_mb(watcher.pid), "naive": steady_rss_mb(naive.process.pid)}
    base = counted(bench.port)
    bench.emit(events)  # an hour's worth as fast as the double streams it
    # Read /metrics seldom: each scrape is a thread of the watcher's, and the figure is its
    # memory for the Events, not for a scraper polling it 20 times a second.
    deadline = time.monotonic() + 600
    while counted(bench.port) < base + events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the watcher did not count {events:,} Events in 600s")
        time.sleep(SCRAPE_INTERVAL)
    wait_until(lambda: naive.cached >= events, 600, "the informer's cache")
    time.sleep(PUBLISH_WAIT)
    return {
        "watcher": rss_mb(watcher.pid) - before["watcher"],
        "watcher peak": peak_rss_mb(watcher.pid) - before["watcher"],
        "watcher before": before["watcher"],
        "naive": rss_mb(naive.process.pid) - before["naive"],
        "naive peak": peak_rss_mb(naive.process.pid) - before["naive"],
        "naive before": before["naive"],
    }


def run(workdir: Path, args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        api = stack.enter_context(FakeKubeAPI(bookmark_interval=5.0, history_limit=4 * CHUNK))
        nats = stack.enter_context(NatsServer(workdir / "nats"))
        redis = stack.enter_context(RedisServer(workdir / "redis"))
        double = Double(api)
        pools = ("a", "b", "c")
        nodes = [
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": f"node-{i}", "labels": {"karpenter.sh/nodepool": pools[i % 3]}}}
            for i in range(NODES)
        ]  # fmt: skip
        double.store("", "nodes", nodes)
        apps = [deployment(f"app-{j}", catalog_image(j)) for j in range(IMAGES)]
        double.store("apps", "deployments", apps)
        port = free_port()
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")
        env = product.product_env(
            broker_url=f"{redis.url}/0",
            nats_url=nats.url,
            kubeconfig=kubeconfig,
            WARM_METRICS_PORT=str(port),
            WARM_HEALTH_PORT="0",
        )
        watcher = product.watcher(env, workdir / "logs").start()
        stack.callback(watcher.stop)
        wait_until(lambda: listed(port) >= 1, 120, "the watcher's Events list", watcher.log_tail)
        wait_until(lambda: rewarms_sent(port) >= NODES, 120, "the first sync", watcher.log_tail)
        bench = Bench(double, port, args)
        naive = Naive(kubeconfig)
        stack.callback(naive.stop)
        wait_until(lambda: naive.process.poll() is None and naive.cached == 0, 60, "the informer")
        mem = memory(bench, watcher, naive)
        naive.stop()
        rates: list[float] = []
        raw: list[float] = []
        served = counted_total = 0
        for round_ in range(args.rounds):
            sides = ("watcher", "raw") if round_ % 2 == 0 else ("raw", "watcher")
            for side in sides:
                if side == "raw":
                    raw.append(bench.raw_round())
                    continue
                rate, streamed, seen = bench.watcher_round(watcher.log_tail)
                rates.append(rate)
                served, counted_total = served + streamed, counted_total + seen
    return report(args, mem, rates, raw, served, counted_total)


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return (
        f"median {statistics.median(values):,.0f}, IQR {q[0]:,.0f}..{q[2]:,.0f}, "
        f"min..max {min(values):,.0f}..{max(values):,.0f}"
    )


def report(
    args: argparse.Namespace,
    mem: dict[str, float],
    rates: list[float],
    raw: list[float],
    served: int,
    counted_total: int,
) -> int:
    print(
        f"Kubelet Events benchmark: python -m watcher on defaults, {NODES} nodes, {IMAGES} "
        "catalog images, Pulled Events through the API double's HTTP watch (events.k8s.io/v1)"
    )
    print()
    print(f"memory, {args.events:,} Events (100,000 an hour), resident set after minus before:")
    print(f"  watcher (product, counts):       {mem['watcher']:6.1f} MB "
          f"(peak {mem['watcher peak']:.1f} MB above {mem['watcher before']:.0f} MB)")  # fmt: skip
    print(f"  baseline, SharedInformer cache:  {mem['naive']:6.1f} MB "
          f"(peak {mem['naive peak']:.1f} MB above {mem['naive before']:.0f} MB)")  # fmt: skip
    print()
    print(f"speed, {len(rates)} alternating rounds of {args.burst:,} Events, Events/s:")
    print(f"  watcher counted (warm_watcher_kubelet_events_total): {spread(rates)}")
    print(f"  baseline, the double streaming to a line reader:      {spread(raw)}")
    print(f"  Events the double streamed to the watcher: {served:,}; it counted: {counted_total:,}")
    limited = (
        "the watcher"
        if statistics.median(rates) < 0.8 * statistics.median(raw)
        else ("the API double (its serving rate)")
    )
    print(f"  limited by: {limited}")
    ok_mb = max(mem["watcher"], mem["watcher peak"]) <= TARGET_MB
    ok_rate = statistics.median(rates) >= TARGET_RATE and served == counted_total
    verdict = "meets" if ok_mb and ok_rate else "MISSES"
    print()
    print(f"product {verdict} the targets (<= {TARGET_MB:.0f} MB extra at {args.events:,} Events, "
          f">= {TARGET_RATE:,.0f} Events/s, every Event streamed counted)")  # fmt: skip
    return 0 if ok_mb and ok_rate else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="Events for the memory")
    parser.add_argument("--rounds", type=int, default=15, help="alternating speed rounds")
    parser.add_argument("--burst", type=int, default=10_000, help="Events per speed round")
    args = parser.parse_args()
    ensure_system_packages()
    with scratch_dir("bk-") as workdir:
        return run(workdir, args)


if __name__ == "__main__":
    sys.exit(main())
