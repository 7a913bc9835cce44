"""``python -m worker``: the node agent, a Celery worker that consumes only its node's queue.

It runs a thread pool (pulls wait on the runtime, not the CPU; threads share one runtime
connection, one NATS connection and the de-duplication of concurrent pulls) and turns off the
chatter that costs most at thousands of workers: gossip, mingle and frequent heartbeats.
"""

from __future__ import annotations

import logging
import sys

from tasks.app import app
from tasks.bus import NatsBus
from tasks.routing import InvalidNodeName, queue_for_node
from tasks.settings import SettingsError, load_settings

from . import handlers  # noqa: F401  (registers the task bodies on the app)
from .agent import NodeAgent, install_agent
from .runtime import RuntimeUnavailable, open_runtime

log = logging.getLogger("worker")


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
    install_agent(NodeAgent(settings, node, runtime, NatsBus(settings.nats)))
    log.info("node %s: consuming %s through %s", node, queue, runtime.name)
    concurrency = settings.runtime.max_concurrent_pulls + 1  # one slot for a re-warm
    app.worker_main(
        [
            "worker",
            f"--queues={queue}",
            f"--hostname=warm@{node}",
            "--pool=threads",
            f"--concurrency={concurrency}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            *(argv or []),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
