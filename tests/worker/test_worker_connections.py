"""How many broker connections a node worker holds: what decides whether Redis can serve
thousands of nodes (the chart's maxclients is sized for 5,000 nodes at the default's four).

Counted after a pull that retried, since a retry publishes a message of the worker's own, and
from the worker's side (its sockets to Redis in /proc), so the test's client is not counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localcluster import Containerd
from localcluster.harness import start_worker, tcp_connections, wait_for
from localcluster.services import NatsServer, RedisServer
from tasks.names import PULL_IMAGE

SETTLE = 3.0  # seconds for connections opened lazily after "ready" to show up
UNREACHABLE = "127.0.0.1:1/nothing/here:v1"  # connection refused: a transient failure


@pytest.mark.parametrize(("remote_control", "most"), [(None, 4), ("true", 8)])
def test_broker_connections_per_worker_after_a_retry(
    node: Containerd,
    nats_server: NatsServer,
    workdir: Path,
    remote_control: str | None,
    most: int,
) -> None:
    env = {"WARM_WORKER_REMOTE_CONTROL": remote_control} if remote_control else {}
    with RedisServer(workdir / f"conn-{remote_control}") as broker:
        worker = start_worker(node.endpoint, broker, nats_server, workdir / "logs", **env)
        try:
            worker.send(PULL_IMAGE, image=UNREACHABLE)
            wait_for(lambda: "retry: Retry in" in worker.process.log_tail(50_000), 60,
                     "the pull's retry", worker.process.log_tail)  # fmt: skip
            time.sleep(SETTLE)
            assert worker.process.pid is not None
            held = tcp_connections(worker.process.pid, broker.port)
        finally:
            worker.stop()
    assert 1 <= held <= most, f"{held} broker connections, expected at most {most}"
