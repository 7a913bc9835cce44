"""``python -m worker``: the node agent, a Celery worker that consumes only its node's queue.

It runs a thread pool (pulls wait on the runtime, not the CPU; threads share one runtime
connection, one NATS connection and the de-duplication of concurrent pulls) and turns off the
chatter that costs most at thousands of workers: gossip, mingle and frequent heartbeats.

A worker that starts, or whose broker connection comes back, reconciles its node's slice
against its runtime at once (:mod:`worker.reconcile`): it never waits for a redelivery to be warm.

No pull is lost when the worker stops: SIGTERM is Celery's warm shutdown (running pulls finish,
reserved messages go back to the queue), and a worker killed outright leaves its messages
unacknowledged (late acks), so the broker delivers them again: RabbitMQ at once, Redis only
after its visibility timeout, which is why the successor reconciles rather than waits.
"""

from __future__ import annotations

import logging
import sys

from tasks.app import app
from tasks.bus import NatsBus
from tasks.probes import serve_metrics
from tasks.routing import InvalidNodeName, queue_for_node
from tasks.settings import Settings, SettingsError, load_settings

from . import health
from .reconcile import Reconcile  # importing it registers the task bodies on the app too
from .runtime import ImageRuntime, RuntimeUnavailable, open_runtime
from .steps import agent_step

log = logging.getLogger("worker")

HEARTBEAT_INTERVAL = 60  # seconds; Celery's default of 2 s is a flood at thousands of nodes


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
        node = settings.node.name
        if not node:
            raise SettingsError("WARM_NODE_NAME (or NODE_NAME) is not set: which node is this?")
        queue = queue_for_node(node)
        runtime = open_runtime(settings.runtime)
    except (SettingsError, InvalidNodeName, RuntimeUnavailable) as error:
        print(f"worker: {error}", file=sys.stderr)
        return 2
    bus = NatsBus(settings.nats)
    app.steps["worker"].add(agent_step(settings, node, runtime, bus))
    app.steps["consumer"].add(Reconcile)
    log.info("node %s: consuming %s through %s", node, queue, runtime.name)
    _check_settings(settings, runtime)
    serve_metrics(settings.probes.metrics_port)
    health.serve(settings.probes.health_port, runtime)
    try:
        app.worker_main(_worker_argv(settings, queue, node, argv or []))
    finally:
        bus.close()  # drains: the last pulls' events leave before the process does
        runtime.close()
    return 0


def _worker_argv(settings: Settings, queue: str, node: str, extra: list[str]) -> list[str]:
    concurrency = settings.runtime.max_concurrent_pulls + 1  # one slot for a re-warm
    argv = [
        "worker",
        f"--queues={queue}",
        f"--hostname=warm@{node}",
        "--pool=threads",
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    if settings.node.remote_control:
        argv.append(f"--heartbeat-interval={HEARTBEAT_INTERVAL}")
    else:
        # The default at fleet scale: task events stay on (celeryconfig), which are all that
        # Flower's task list needs (it lists the worker from them too); no remote control (a
        # broadcast queue and its reply connections) and no heartbeats, which only `celery
        # inspect` and Flower's worker pages need. Retries publish on a connection opened and
        # closed for them (pool limit 0), not one kept per thread: at most four connections
        # after a retry, against eight with remote control (bench_idle_workers).
        app.conf.worker_enable_remote_control = False
        app.conf.broker_pool_limit = 0
        argv.append("--without-heartbeat")
    return argv + extra


def _check_settings(settings: Settings, runtime: ImageRuntime) -> None:
    """Warn about settings that lose or repeat pulls, before the first pull shows it."""
    longest = max(settings.runtime.pull_timeout, settings.runtime.retry_backoff_max)
    if settings.broker.url.startswith("redis") and settings.broker.visibility_timeout <= longest:
        log.warning(
            "WARM_BROKER_VISIBILITY_TIMEOUT=%ss is not above the longest pull or retry delay "
            "(%ss): Redis will deliver such pulls twice",
            settings.broker.visibility_timeout,
            longest,
        )
    try:
        used = runtime.filesystem_usage().used_percent
    except RuntimeUnavailable:
        used = None
    if used is None:
        log.warning("image filesystem not visible from here: disk budget not enforced")
    else:
        log.info(
            "image filesystem %.1f%% full, budget %g%%", used, settings.runtime.disk_budget_percent
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
