"""Idle node workers on Redis: broker connections per worker, and the load they put on Redis.

    python bench/bench_idle_workers.py [--workers 10] [--idle 60] [--monitor 5]

The default worker (task events on, for Flower's task list; no remote control or heartbeats)
is measured beside the opt-in remote control mode (WARM_WORKER_REMOTE_CONTROL=true, the former
default) and plain Celery workers, and after a pull that retried once: a retry publishes a
message of the worker's own, which may open connections that an idle worker never needs.

Why: a cluster runs one node worker per node, and most of the time every one of them is idle.
At 5,000 nodes what an idle worker costs the broker, times 5,000, is the product's standing load
on Redis: connections (Redis refuses clients beyond ``maxclients``, 10,000 by default), commands
and bytes per second, and Redis CPU. Celery's defaults add chatter that grows with the fleet:
gossip (every worker subscribes to every other worker's events), mingle (a broadcast at start)
and a heartbeat every 2 s. The node worker (``python -m worker``) runs without gossip and mingle,
with a 60 s heartbeat when remote control is on. Target: 5,000 default workers, after a retry,
within the chart's Redis maxclients (CHART_MAXCLIENTS) with a tenth of it to spare for the other
components, and no gossip traffic.

Setup, all real and on loopback: one containerd (a worker checks its runtime at start), a
private NATS, and for each fleet a fresh private Redis, so each fleet's figures are its own.

* product: ``--workers`` processes of ``python -m worker``, each with its own WARM_NODE_NAME;
* baseline: the same number of plain ``celery -A tasks worker -Q warm.node.<n> -n x@<n>
  --pool=solo`` with Celery's defaults (gossip, mingle, heartbeat on), same broker settings.

Measured from Redis itself:

* start-up: MONITOR from launch until every worker is ready and 3 s more - commands by name,
  and every SUBSCRIBE/PSUBSCRIBE (gossip shows as subscriptions to the ``celeryev`` events);
* empty Redis: its own CPU over 5 s before any worker starts (its timers, not the workers'),
  subtracted from the idle window's Redis CPU;
* idle window (``--idle`` s, at least the product's 60 s heartbeat interval so that every
  worker's heartbeat falls in it; nothing else talks to Redis): connected_clients (minus this
  script's), per-worker connections (each worker's TCP sockets to Redis, read from /proc),
  CLIENT LIST by last command and subscriptions, and the INFO deltas: commands/s, net bytes in
  and out per second, Redis CPU, commandstats per command. The one INFO call of the script in
  the window is measured beside it and subtracted;
* a MONITOR window after it (``--monitor`` s): PUBLISH by channel, to tell heartbeats from gossip;
* a retry (product fleets): each worker is sent a pull of an image on a closed port (connection
  refused, a transient failure); once each worker's log shows the task retried, its sockets to
  Redis are counted again (/proc), and Redis's own memory for its clients (INFO
  mem_clients_normal) is read.

Per-worker figures are extrapolated linearly to 5,000 workers. Linear is generous to the
baseline: with gossip each event is delivered to every worker, so its delivery traffic grows with
the square of the fleet; that line is printed apart.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster import Containerd, ensure_system_packages, product
from localcluster.harness import tcp_connections
from localcluster.scratch import scratch_dir
from localcluster.services import NatsServer, RedisServer
from tasks.names import PULL_IMAGE
from tasks.routing import queue_for_node

SCALE = 5000
CHART_MAXCLIENTS = 25000  # chart/values.yaml redis.maxClients
HEADROOM = 0.1  # of maxclients, for the watcher, beat, Flower and CLI clients
UNREACHABLE = "127.0.0.1:1/nothing/here:v1"  # connection refused: transient, retried
READY_TIMEOUT = 120.0
SETTLE = 3.0
EMPTY_SECONDS = 5.0
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Counters:
    """Redis's own cumulative counters, as INFO reports them."""

    commands: int
    net_in: int
    net_out: int
    cpu: float
    per_command: Counter[str]

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.commands - other.commands,
            self.net_in - other.net_in,
            self.net_out - other.net_out,
            self.cpu - other.cpu,
            self.per_command - other.per_command,
        )


@dataclass
class Monitored:
    """What MONITOR showed: commands by name, PUBLISH by channel, subscriptions by pattern."""

    commands: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)
    published_bytes: Counter[str] = field(default_factory=Counter)  # payload sizes, escaped
    subscribed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


@dataclass
class Fleet:
    label: str
    workers: int
    connections: int = 0
    per_worker: list[int] = field(default_factory=list)
    clients: Counter[str] = field(default_factory=Counter)
    idle: Counters | None = None
    idle_seconds: float = 0.0
    empty_cpu: float = 0.0  # Redis's CPU seconds per second with no client
    startup: Monitored = field(default_factory=Monitored)
    window: Monitored = field(default_factory=Monitored)
    gossip_listeners: int = 0
    maxclients: int = 0
    after_retry: list[int] = field(default_factory=list)  # empty: no retry measured
    client_memory: int = 0  # Redis's memory for normal clients after the retry, bytes


# --- Redis's view ---------------------------------------------------------------------------


def counters(client: redis.Redis) -> Counters:
    info: dict[str, Any] = client.info("all")
    per_command = Counter(
        {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
    )
    return Counters(
        commands=int(info["total_commands_processed"]),
        net_in=int(info["total_net_input_bytes"]),
        net_out=int(info["total_net_output_bytes"]),
        cpu=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        per_command=per_command,
    )


def idle_window(client: redis.Redis, seconds: float) -> tuple[Counters, float]:
    """INFO deltas over ``seconds`` of idleness, minus this script's own INFO call."""
    first = counters(client)
    start = counters(client)  # back to back: start - first is one INFO call of ours
    own = start - first
    started = time.monotonic()
    time.sleep(seconds)
    end = counters(client)
    elapsed = time.monotonic() - started
    return (end - start) - own, elapsed


def client_kinds(client: redis.Redis, own_id: int) -> Counter[str]:
    """Connected clients grouped by their last command and subscriptions."""
    kinds: Counter[str] = Counter()
    for entry in client.client_list():
        if int(entry["id"]) == own_id:
            continue
        subscribed = f" sub={entry['sub']} psub={entry['psub']}" if entry["flags"] == "P" else ""
        name = f" name={entry['name']}" if entry.get("name") else ""
        kinds[f"cmd={entry['cmd']}{subscribed}{name}"] += 1
    return kinds


class Monitor:
    """MONITOR on a raw socket, in a thread, between start() and stop()."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self.seen = Monitored()
        self._started = 0.0

    def start(self) -> Monitor:
        self._sock.sendall(b"MONITOR\r\n")
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> Monitored:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        self.seen.seconds = time.monotonic() - self._started
        return self.seen

    def _read(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\r\n")
            for line in lines:
                self._record(line.decode(errors="replace"))

    def _record(self, line: str) -> None:
        words = _QUOTED.findall(line)
        if not line.startswith("+") or not words:
            return
        command = words[0].lower()
        self.seen.commands[command] += 1
        if command == "publish" and len(words) > 2:
            self.seen.published[words[1]] += 1
            self.seen.published_bytes[words[1]] += len(words[2])
        elif command in ("subscribe", "psubscribe"):
            for channel in words[1:]:
                self.seen.subscribed[f"{command} {channel}"] += 1


# --- the fleets -----------------------------------------------------------------------------


def node_name(index: int) -> str:
    return f"idle-{index:03d}"


def product_workers(
    count: int, env: dict[str, str], endpoint: str, logdir: Path
) -> list[product.ProductProcess]:
    return [product.worker(node_name(i), endpoint, env, logdir) for i in range(count)]


def celery_workers(count: int, env: dict[str, str], logdir: Path) -> list[product.ProductProcess]:
    processes = []
    for index in range(count):
        node = node_name(index)
        args = ["worker", "-Q", queue_for_node(node), "-n", f"x@{node}", "--pool=solo"]
        processes.append(product.celery(f"celery-{node}", [*args, "--loglevel=INFO"], env, logdir))
    return processes


def wait_ready(processes: list[product.ProductProcess]) -> float:
    started = time.monotonic()
    for process in processes:
        while " ready." not in process.log_tail(50_000):
            if not process.alive() or time.monotonic() - started > READY_TIMEOUT:
                raise RuntimeError(f"{process.name} did not start:\n{process.log_tail()}")
            time.sleep(0.1)
    return time.monotonic() - started


def stop_all(processes: list[product.ProductProcess]) -> None:
    with ThreadPoolExecutor(max(1, len(processes))) as pool:
        list(pool.map(lambda process: process.stop(), processes))


def measure_fleet(
    fleet: Fleet,
    processes: list[product.ProductProcess],
    redis_server: RedisServer,
    options: argparse.Namespace,
    retries: bool,
) -> None:
    client = redis.Redis.from_url(f"{redis_server.url}/0")
    try:
        empty, seconds = idle_window(client, EMPTY_SECONDS)
        fleet.empty_cpu = empty.cpu / seconds
        print(f"{fleet.label}: empty Redis CPU {100 * fleet.empty_cpu:.2f}% of a core", flush=True)
        monitor = Monitor(redis_server.port).start()
        try:
            for process in processes:
                process.start()
            ready = wait_ready(processes)
            time.sleep(SETTLE)
        finally:
            fleet.startup = monitor.stop()
        fleet.gossip_listeners = sum(
            count for key, count in fleet.startup.subscribed.items() if "celeryev" in key
        )
        print(f"{fleet.label}: {fleet.workers} workers ready in {ready:.1f}s", flush=True)
        observe_connections(fleet, processes, client, redis_server.port)
        fleet.idle, fleet.idle_seconds = idle_window(client, options.idle)
        print_idle(fleet)
        monitor = Monitor(redis_server.port).start()
        try:
            time.sleep(options.monitor)
        finally:
            fleet.window = monitor.stop()
        print_window(fleet)
        if retries:
            measure_retry(fleet, processes, client, redis_server)
    finally:
        client.close()


def measure_retry(
    fleet: Fleet,
    processes: list[product.ProductProcess],
    client: redis.Redis,
    redis_server: RedisServer,
) -> None:
    """Each worker sent a pull that fails transiently; connections counted once it retried."""
    sender = Celery("bench", broker=f"{redis_server.url}/0")
    try:
        for index in range(len(processes)):
            sender.send_task(
                PULL_IMAGE,
                kwargs={"node": node_name(index), "image": UNREACHABLE},
                queue=queue_for_node(node_name(index)),
            )
    finally:
        sender.close()
    deadline = time.monotonic() + READY_TIMEOUT
    for process in processes:
        while "retry: Retry in" not in process.log_tail(50_000):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not retry:\n{process.log_tail()}")
            time.sleep(0.2)
    time.sleep(SETTLE)
    fleet.after_retry = [tcp_connections(p.pid, redis_server.port) for p in processes if p.pid]
    fleet.client_memory = int(client.info("memory")["mem_clients_normal"])
    print(
        f"{fleet.label}: after a retry, per worker {min(fleet.after_retry)}-"
        f"{max(fleet.after_retry)} connections; Redis memory for clients "
        f"{fleet.client_memory / 1024:,.0f} KiB",
        flush=True,
    )


def observe_connections(
    fleet: Fleet, processes: list[product.ProductProcess], client: redis.Redis, port: int
) -> None:
    own_id = int(client.client_id())
    fleet.connections = int(client.info("clients")["connected_clients"]) - 1  # minus ours
    fleet.per_worker = [tcp_connections(p.pid, port) for p in processes if p.pid is not None]
    fleet.clients = client_kinds(client, own_id)
    fleet.maxclients = int(str(client.config_get("maxclients")["maxclients"]))
    print(
        f"{fleet.label}: {fleet.connections} Redis clients, per worker "
        f"{min(fleet.per_worker)}-{max(fleet.per_worker)}; "
        + ", ".join(f"{n} x {kind}" for kind, n in sorted(fleet.clients.items())),
        flush=True,
    )


# --- figures --------------------------------------------------------------------------------


def rate(fleet: Fleet, value: float) -> float:
    return value / fleet.idle_seconds if fleet.idle_seconds else 0.0


def idle_rates(fleet: Fleet) -> dict[str, float]:
    """The idle window's per-second figures for the whole sample."""
    idle = fleet.idle
    assert idle is not None
    return {
        "commands/s": rate(fleet, idle.commands),
        "bytes in/s": rate(fleet, idle.net_in),
        "bytes out/s": rate(fleet, idle.net_out),
        "Redis CPU above empty, % of a core": 100 * (rate(fleet, idle.cpu) - fleet.empty_cpu),
        "PUBLISH/s": rate(fleet, idle.per_command["publish"]),
    }


def print_idle(fleet: Fleet) -> None:
    assert fleet.idle is not None
    figures = ", ".join(f"{name} {value:,.2f}" for name, value in idle_rates(fleet).items())
    print(f"{fleet.label}: idle {fleet.idle_seconds:.0f}s: {figures}", flush=True)
    calls = ", ".join(
        f"{cmd} {rate(fleet, n):.2f}/s" for cmd, n in fleet.idle.per_command.most_common()
    )
    print(f"{fleet.label}: idle commands: {calls or 'none'}", flush=True)


def print_window(fleet: Fleet) -> None:
    window = fleet.window
    published = ", ".join(f"{n} x {ch}" for ch, n in window.published.most_common()) or "none"
    print(f"{fleet.label}: MONITOR {window.seconds:.0f}s, PUBLISH by channel: {published}")
    startup = ", ".join(f"{n} {cmd}" for cmd, n in fleet.startup.commands.most_common())
    print(f"{fleet.label}: start-up commands: {startup}")
    subscribed = ", ".join(f"{n} x {s}" for s, n in sorted(fleet.startup.subscribed.items()))
    print(f"{fleet.label}: subscriptions: {subscribed or 'none'}", flush=True)


def gossip_traffic(fleet: Fleet) -> list[str]:
    """Event traffic other than heartbeats, and listeners to other workers' events."""
    found = [f"{fleet.gossip_listeners} subscribers to worker events"] * bool(
        fleet.gossip_listeners
    )
    for channel, count in fleet.window.published.items():
        if "celeryev" in channel and not channel.endswith("worker.heartbeat"):
            found.append(f"{count} PUBLISH on {channel}")
    return found


def quadratic_line(fleet: Fleet) -> str | None:
    """Gossip delivers each event to every listener: deliveries grow with the fleet squared."""
    if not fleet.gossip_listeners or not fleet.window.seconds:
        return None
    events = sum(n for ch, n in fleet.window.published.items() if "celeryev" in ch)
    size = sum(b for ch, b in fleet.window.published_bytes.items() if "celeryev" in ch)
    if not events:
        return None
    per_worker = events / fleet.window.seconds / fleet.workers
    listeners_per_worker = fleet.gossip_listeners / fleet.workers
    deliveries = per_worker * SCALE * listeners_per_worker * SCALE
    return (
        f"{fleet.label}: gossip at {SCALE:,} workers delivers {per_worker:.2f} events/s/worker "
        f"to {listeners_per_worker * SCALE:,.0f} listeners: {deliveries:,.0f} messages/s, "
        f"about {deliveries * size / events / 1e9:,.1f} GB/s out of Redis (quadratic)"
    )


def table_rows(fleets: list[Fleet]) -> list[tuple[str, list[float]]]:
    rows: list[tuple[str, list[float]]] = [
        ("broker connections per worker (max)", [float(max(f.per_worker)) for f in fleets] * 2),
        ("  the same after a retry", [float(max(f.after_retry, default=0)) for f in fleets] * 2),
        ("Redis clients", [float(f.connections) for f in fleets]),
    ]
    for name in idle_rates(fleets[0]):
        rows.append((name, [idle_rates(f)[name] for f in fleets]))
    rows.append(("start-up commands", [float(sum(f.startup.commands.values())) for f in fleets]))
    rows.append(("subscribers to worker events", [float(f.gossip_listeners) for f in fleets]))
    rows.append(
        ("Redis client memory after a retry, KiB", [f.client_memory / 1024 for f in fleets])
    )
    scaled = []
    for name, values in rows[2:]:
        factors = [SCALE / f.workers for f in fleets]
        scaled.append((name, values + [v * k for v, k in zip(values, factors, strict=True)]))
    return rows[:2] + scaled


def report(fleets: list[Fleet], options: argparse.Namespace) -> bool:
    baseline = fleets[-1]
    print()
    print(
        f"Idle workers on a private Redis: {options.workers} workers per side, idle "
        f"{options.idle:g} s each; x{SCALE:,}: extrapolated linearly to {SCALE:,} workers"
    )
    print(
        "product: python -m worker on defaults (task events on, no remote control or heartbeats);"
        " remote control: WARM_WORKER_REMOTE_CONTROL=true; baseline: celery -A tasks worker"
        " --pool=solo. 0 after a retry: not measured (plain Celery has no node agent)"
    )
    print()
    labels = [fleet.label for fleet in fleets]
    heading = labels + [f"{label} x{SCALE:,}" for label in labels]
    print(f"{'per sample of ' + str(options.workers):<38}" + "".join(f"{h:>21}" for h in heading))
    for name, values in table_rows(fleets):
        print(f"{name:<38}" + "".join(f"{v:>21,.1f}" for v in values))
    print()
    line = quadratic_line(baseline)
    if line:
        print(line)
    return verdicts(fleets)


def connection_mix(fleet: Fleet) -> str:
    """A worker's connections by their last command (CLIENT LIST), averaged over the sample."""
    return ", ".join(f"{n / fleet.workers:g} {kind}" for kind, n in sorted(fleet.clients.items()))


def verdicts(fleets: list[Fleet]) -> bool:
    product_fleet, baseline = fleets[0], fleets[-1]
    most = max(product_fleet.per_worker + product_fleet.after_retry)
    allowed = CHART_MAXCLIENTS * (1 - HEADROOM)
    connections_met = most * SCALE <= allowed
    gossip = gossip_traffic(product_fleet)
    for fleet in fleets:
        print(f"{fleet.label} connections per worker: {connection_mix(fleet)}")
    for fleet in fleets:
        needed = max(fleet.per_worker + fleet.after_retry) * SCALE
        redis_default = "fits" if needed <= fleet.maxclients else "EXCEEDS"
        print(
            f"{fleet.label} at {SCALE:,} workers: {needed:,} connections; Redis' own default "
            f"maxclients {fleet.maxclients:,}: {redis_default}"
            f", the chart's {CHART_MAXCLIENTS:,}: "
            f"{'fits' if needed <= allowed else 'EXCEEDS'} (with {HEADROOM:.0%} to spare)"
        )
    print(
        f"target: {SCALE:,} default workers after a retry within {allowed:,.0f} connections -> "
        f"{'MET' if connections_met else 'MISSED'} ({most} per worker)"
    )
    print(
        f"target: no gossip traffic -> {'MET' if not gossip else 'MISSED'} (product: "
        f"{'; '.join(gossip) or 'none'}; baseline: {'; '.join(gossip_traffic(baseline)) or 'none'})"
    )
    return connections_met and not gossip


# --- running --------------------------------------------------------------------------------


def run_fleet(
    label: str,
    make: Callable[[dict[str, str]], list[product.ProductProcess]],
    workdir: Path,
    nats: NatsServer,
    options: argparse.Namespace,
    settings: dict[str, str] | None = None,
) -> Fleet:
    fleet = Fleet(label, options.workers)
    with RedisServer(workdir / f"redis-{label.replace(' ', '-')}") as redis_server:
        env = product.product_env(
            broker_url=f"{redis_server.url}/0",
            nats_url=nats.url,
            WARM_METRICS_PORT="0",
            WARM_HEALTH_PORT="0",
            WARM_DISK_BUDGET_PERCENT="99",
        )
        env.update(settings or {})
        processes = make(env)
        try:
            measure_fleet(fleet, processes, redis_server, options, retries=label != "baseline")
        finally:
            stop_all(processes)
    return fleet


def run(workdir: Path, options: argparse.Namespace) -> bool:
    logdir = workdir / "logs"
    with (
        NatsServer(workdir / "nats") as nats,
        Containerd(workdir, "node") as node,
    ):

        def workers(env: dict[str, str]) -> list[product.ProductProcess]:
            return product_workers(options.workers, env, node.endpoint, logdir)

        fleets = [
            run_fleet("product", workers, workdir, nats, options),
            run_fleet(
                "remote control",
                workers,
                workdir,
                nats,
                options,
                {"WARM_WORKER_REMOTE_CONTROL": "true"},
            ),
            run_fleet(
                "baseline",
                lambda env: celery_workers(options.workers, env, logdir),
                workdir,
                nats,
                options,
            ),
        ]
    return report(fleets, options)


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle window")
    parser.add_argument("--monitor", type=float, default=5.0, help="seconds of MONITOR after it")
    return parser.parse_args()


def main() -> int:
    args = options()
    ensure_system_packages()
    with scratch_dir("bi-") as workdir:
        return 0 if run(workdir, args) else 1


if __name__ == "__main__":
    sys.exit(main())
