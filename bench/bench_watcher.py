"""Watcher benchmark: the whole ``python -m watcher`` process, fed by real HTTP watch streams.

    python bench/bench_watcher.py [--pods 10000 100000] [--pods-per-node 20] [--budget 900]

Why: a watcher sees every pod and node of the cluster, first as one big list, then as a stream
of watch events (most of them status updates). If it is slow, a rollout in a large cluster
leaves it minutes behind; if it keeps whole objects, its memory grows with the cluster.

What runs, all real and on loopback: the Kubernetes API double (localcluster.kubeapi, kmock
over HTTP), NATS, Redis and ``python -m watcher`` on every default setting, talking to the
double through the official client. The initial pods and nodes are put straight into the
double's store (creating them over HTTP runs at about 20 objects/s on a loaded machine, so
100,000 would take over an hour); the watcher then lists and watches them over HTTP as it
would an apiserver. Pods are ~1 KiB bare pods, each bound to a node, using 2,000 images; nodes
are in three pools, the third a small one that the latency workloads select.

Measured:

* initial sync: from the watcher's start until its own ``warm_watcher_events`` counter (its
  /metrics port) has counted every listed pod and node, then until its first sync is out (a
  re-warm task sent to every node, by its ``warm_watcher_tasks_sent`` counter);
* events/s: ``--burst`` pod status updates put on the double's watch bus, until the watcher's
  counter has counted them all; beside it, the double's own serving rate: the same burst to a
  client that only reads the watch stream's lines (no JSON), so the figure says which side
  limited it;
* latency: ``--samples`` new Deployments, one at a time, each with an image of its own and a
  nodeSelector for the small pool, from the moment it enters the double (and its watch bus) to
  the first pull task for its image on the broker, read from Redis MONITOR timestamps;
* peak RSS: VmHWM of the watcher process (/proc/<pid>/status) at the end.

Sizes run smallest first, each with a fresh double, broker and watcher (5,000 nodes at 100,000
pods). A size whose phase does not finish within ``--budget`` seconds is reported out of reach,
with the phase, and larger sizes are not tried: the output names the largest size measured.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import FakeKubeAPI, ensure_system_packages, free_port, product
from localcluster.kubeapi import RVEmulator
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer

IMAGES = 2000
CHUNK = 2000  # objects put into the double per call, so its event loop keeps serving
SMALL_POOL = 10  # nodes the latency workloads select
LATENCY_TIMEOUT = 60.0
EVENTS = re.compile(r'^warm_watcher_events_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)
REWARMS = re.compile(
    r'^warm_watcher_tasks_sent_total\{task="warm.rewarm_node"\} ([0-9.e+]+)$', re.M
)
MONITOR_LINE = re.compile(r"^\+(\d+\.\d+) ")


def pod(i: int, nodes: int) -> dict[str, Any]:
    """Pod ``i`` as the apiserver sends it, trimmed to ~1 KiB; one of IMAGES images."""
    name = f"app-{i % 977}-{i}"
    image = i % IMAGES
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "labels": {"app": f"app-{i % 977}", "pod-template-hash": "5d8f7c9b4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": f"registry.example.com/team-{image % 40}/service-{image}:v{image % 7}",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                },
                {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.29.1"},
            ],
            "nodeName": f"node-{i % nodes}",
            "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        },
    }


def node_labels(i: int, nodes: int) -> dict[str, str]:
    pool = "small" if i >= nodes - SMALL_POOL else ("a" if i % 2 else "b")
    return {"pool": pool, "kubernetes.io/os": "linux", "kubernetes.io/hostname": f"node-{i}"}


def latency_deployment(k: int, image: str) -> dict[str, Any]:
    labels = {"app": f"latency-{k}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"latency-{k}", "namespace": "default", "uid": f"lat-{k}"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"pool": "small"},
                    "containers": [{"name": "main", "image": image}],
                },
            },
        },
    }


class Double:
    """Objects put straight into the double's store, and events straight onto its watch bus."""

    def __init__(self, api: FakeKubeAPI) -> None:
        self.api = api
        self._puts: list[asyncio.Future[None]] = []  # referenced until done, as asyncio asks
        self.resources = api.call(
            lambda e: {(r.group, r.plural): r for r in e._get_resources() if r.version == "v1"}
        )

    def store(self, group: str, plural: str, objects: list[dict[str, Any]]) -> None:
        """Objects the watcher will list (no events: nobody watches yet)."""
        resource = self.resources[group, plural]
        for start in range(0, len(objects), CHUNK):
            chunk = objects[start : start + CHUNK]
            self.api.call(partial(_put, resource=resource, objects=chunk), timeout=120)

    def emit(self, group: str, plural: str, kind: str, objects: list[dict[str, Any]]) -> float:
        """``kind`` events of ``objects`` into the store and onto the watch bus, as a create or
        an update over HTTP would; returns the epoch time they entered it."""
        resource = self.resources[group, plural]

        def put(emulator: RVEmulator) -> float:
            events = []
            for obj in objects:
                key = (resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                emulator._objects[key] = obj
                events.append({"type": kind, "object": emulator._objects[key].raw})
            self._puts.append(asyncio.ensure_future(emulator._buses[resource].put(*events)))
            return time.time()

        return self.api.call(put, timeout=120)


def _put(emulator: RVEmulator, resource: Any, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        emulator.rv += 1
        obj["metadata"]["resourceVersion"] = str(emulator.rv)
        emulator._objects[resource, obj["metadata"].get("namespace"), obj["metadata"]["name"]] = obj


def watcher_metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def watcher_events(port: int) -> dict[str, float]:
    """The watcher's own warm_watcher_events counter, by kind, from its /metrics."""
    return {kind: float(value) for kind, value in EVENTS.findall(watcher_metrics(port))}


def rewarms_sent(port: int) -> float:
    """Re-warm tasks the watcher sent: one per node that joined, once the first sync is out."""
    return sum(float(value) for value in REWARMS.findall(watcher_metrics(port)))


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = str
) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs()}")
        time.sleep(0.05)
    return time.time()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class PullTaskMonitor:
    """Redis MONITOR in a thread: the first LPUSH naming each image, by Redis' own clock."""

    def __init__(self, port: int, marker: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.settimeout(0.2)
        self._marker = marker
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self._thread.start()

    def seen(self, image: str) -> float | None:
        with self._lock:
            return self.first.get(image)

    def has(self, image: str) -> bool:
        return self.seen(image) is not None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _read(self) -> None:
        pending = b""
        image = re.compile(re.escape(self._marker) + r"[\w.-]+:v1")
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\r\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                stamp = MONITOR_LINE.match(line)
                if not stamp or '"lpush"' not in line.lower() or self._marker not in line:
                    continue
                for found in set(image.findall(line)):
                    with self._lock:
                        self.first.setdefault(found, float(stamp.group(1)))


RAW_CONSUMER = r"""
import sys, time, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
with urllib.request.urlopen(url, timeout=600) as stream:
    print("open", flush=True)
    seen = 0
    for line in stream:
        if b'"BOOKMARK"' in line:
            continue
        seen += 1
        if seen >= count:
            print(time.time(), flush=True)
            break
"""


def serving_rate(double: Double, pods: list[dict[str, Any]], burst: int) -> float:
    """Events/s the double streams to a client that only reads lines (the same burst)."""
    rv = double.api.call(lambda e: e.rv)
    url = f"{double.api.url}/api/v1/pods?watch=true&resourceVersion={rv}"
    consumer = subprocess.Popen(
        [sys.executable, "-c", RAW_CONSUMER, url, str(burst)], stdout=subprocess.PIPE, text=True
    )
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "open":
        raise RuntimeError("the raw watch consumer did not connect")
    time.sleep(0.5)  # the stream is registered with the double's bus
    started = double.emit("", "pods", "MODIFIED", touched(pods, burst, "raw"))
    line = consumer.stdout.readline().strip()
    if not line:
        raise TimeoutError(f"the double did not stream {burst} events to a line reader")
    finished = float(line)
    consumer.wait(timeout=30)
    return burst / (finished - started)


def touched(pods: list[dict[str, Any]], count: int, why: str) -> list[dict[str, Any]]:
    """``count`` pods with a status update, as the kubelet's would be."""
    updated = []
    for obj in pods[:count]:
        copy = {**obj, "status": {**obj["status"], "message": f"{why} {time.time()}"}}
        copy["metadata"] = dict(obj["metadata"])
        updated.append(copy)
    return updated


def run(workdir: Path, args: argparse.Namespace) -> None:
    """One size: ``args.pods`` pods on ``args.nodes`` nodes; TimeoutError past the budget."""
    with ExitStack() as stack:
        api = stack.enter_context(FakeKubeAPI(bookmark_interval=5.0, history_limit=args.burst * 3))
        nats = stack.enter_context(NatsServer(workdir / "nats"))
        redis = stack.enter_context(RedisServer(workdir / "redis"))
        double = Double(api)
        started = time.monotonic()
        nodes = [
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": f"node-{i}", "labels": node_labels(i, args.nodes)}}
            for i in range(args.nodes)
        ]  # fmt: skip
        double.store("", "nodes", nodes)
        pods = [pod(i, args.nodes) for i in range(args.pods)]
        double.store("", "pods", pods)
        print(
            f"{args.pods:,} pods and {args.nodes:,} nodes put into the double in "
            f"{time.monotonic() - started:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        raw_rate = serving_rate(double, pods, args.burst)
        port = free_port()
        env = product.product_env(
            broker_url=f"{redis.url}/0",
            nats_url=nats.url,
            kubeconfig=api.write_kubeconfig(workdir / "kubeconfig"),
            WARM_METRICS_PORT=str(port),
            WARM_HEALTH_PORT="0",
        )
        monitor = PullTaskMonitor(redis.port, "registry.example.com/latency/")
        stack.callback(monitor.close)
        watcher = product.watcher(env, workdir / "logs").start()
        stack.callback(watcher.stop)
        launched = time.time()
        synced = wait_until(
            lambda: (
                watcher_events(port).get("Pod", 0) >= args.pods
                and watcher_events(port).get("Node", 0) >= args.nodes
            ),
            args.budget,
            "the watcher's initial list",
            watcher.log_tail,
        )
        dispatched = wait_until(
            lambda: rewarms_sent(port) >= args.nodes,
            args.budget,
            "a re-warm task for every node (the first sync dispatched)",
            watcher.log_tail,
        )
        before = watcher_events(port).get("Pod", 0)
        burst_started = double.emit("", "pods", "MODIFIED", touched(pods, args.burst, "bench"))
        burst_done = wait_until(
            lambda: watcher_events(port).get("Pod", 0) >= before + args.burst,
            args.budget,
            f"{args.burst} pod updates",
            watcher.log_tail,
        )
        latencies = []
        for k in range(-1, args.samples):  # the first (k = -1) is a warm-up, not measured
            image = f"registry.example.com/latency/app-{k + 1}:v1"
            entered = double.emit(
                "apps", "deployments", "ADDED", [latency_deployment(k + 1, image)]
            )
            wait_until(partial(monitor.has, image), LATENCY_TIMEOUT, image, watcher.log_tail)
            if k >= 0:
                latencies.append((monitor.seen(image) or 0.0) - entered)
        assert watcher.pid is not None
        rss = peak_rss_mb(watcher.pid)
    report(args, synced - launched, dispatched - launched,
           args.burst / (burst_done - burst_started), raw_rate, latencies, rss)  # fmt: skip


def report(
    args: argparse.Namespace,
    sync_s: float,
    dispatch_s: float,
    rate: float,
    raw_rate: float,
    latencies: list[float],
    rss: float,
) -> None:
    ms = sorted(1000 * s for s in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    limited = "the watcher" if rate < 0.8 * raw_rate else "the API double (its serving rate)"
    print(f"Watcher benchmark: python -m watcher on defaults, {args.pods:,} pods and "
          f"{args.nodes:,} nodes, through the API double's HTTP list and watch")  # fmt: skip
    print()
    objects = args.pods + args.nodes
    print(
        f"initial list, from the process start: {sync_s:.1f}s ({objects / sync_s:,.0f} objects/s)"
    )
    print(f"  first sync dispatched (a re-warm task per node): {dispatch_s:.1f}s")
    print(f"watch events/s (warm_watcher_events, burst of {args.burst:,} pod updates): {rate:,.0f}")
    print(f"  baseline, the double streaming the same burst to a line reader: {raw_rate:,.0f}/s")
    print(f"  limited by: {limited}")
    print(f"peak RSS (VmHWM) of the watcher: {rss:.0f} MB")
    print(
        f"workload event -> first pull task on the broker (Redis MONITOR), {len(ms)} samples: "
        f"p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, min..max {ms[0]:.0f}..{ms[-1]:.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--pods-per-node", type=int, default=20)
    parser.add_argument("--burst", type=int, default=20_000, help="pod updates (at most --pods)")
    parser.add_argument("--samples", type=int, default=50, help="latency samples")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds per phase")
    args = parser.parse_args()
    ensure_system_packages()
    measured = 0
    for pods in sorted(args.pods):
        nodes = max(SMALL_POOL + 2, pods // args.pods_per_node)
        size = argparse.Namespace(**{**vars(args), "pods": pods, "nodes": nodes,
                                     "burst": min(args.burst, pods)})  # fmt: skip
        with scratch_dir("bw-") as workdir:
            try:
                run(workdir, size)
            except TimeoutError as error:
                lines = str(error).splitlines()
                print(f"{pods:,} pods on {nodes:,} nodes: out of reach within the budget of "
                      f"{args.budget:.0f}s: {lines[0]}")  # fmt: skip
                print(*[f"  watcher: {line}" for line in lines if " ERROR " in line][-1:])
                break
        measured = pods
        print()
    print(f"largest size measured: {measured:,} pods" if measured else "no size measured")
    return 0 if measured == max(args.pods) else 1


if __name__ == "__main__":
    sys.exit(main())
