"""`helm test` runs the command of the chart's test pod: it must fail when the broker or NATS
cannot be reached, and pass on a reachable install whose images are still warming.

The command is taken from the rendered manifest and run as the pod would, against a real Redis
and NATS (and against ports where nothing answers).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from chart_helpers import Rendered

from localcluster import free_port, product
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, SliceImage


def helm_test(
    rendered: Rendered, broker_url: str, nats_url: str
) -> subprocess.CompletedProcess[str]:
    command = rendered.container("test")["command"]
    assert command[:2] == ["celery", "-A"]
    env = product.product_env(broker_url=broker_url, nats_url=nats_url)
    argv = [sys.executable, "-m", *command]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_helm_test_passes_on_a_reachable_install_still_warming(
    rendered: dict[str, Rendered],
    redis_server: RedisServer,
    private_nats: NatsServer,
    private_bus: NatsBus,
) -> None:
    CatalogStore(private_bus).put_slice(NodeSlice("node-1", (SliceImage("example.org/a:v1"),)))

    done = helm_test(rendered["default"], f"{redis_server.url}/8", private_nats.url)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "0/1 node(s) fully warm" in done.stdout  # shown in the pod's log, not a failure


@pytest.mark.parametrize("down", ["broker", "nats"])
def test_helm_test_fails_when_the_broker_or_nats_is_unreachable(
    rendered: dict[str, Rendered], redis_server: RedisServer, private_nats: NatsServer, down: str
) -> None:
    nowhere = free_port()  # nothing listens there
    broker = f"redis://127.0.0.1:{nowhere}/0" if down == "broker" else f"{redis_server.url}/8"
    nats = f"nats://127.0.0.1:{nowhere}" if down == "nats" else private_nats.url

    done = helm_test(rendered["default"], broker, nats)

    assert done.returncode == 2
    setting = {"broker": "WARM_BROKER_URL", "nats": "WARM_NATS_URL"}[down]
    assert setting in done.stderr and "Traceback" not in done.stderr
