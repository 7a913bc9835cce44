"""What a script or ``helm test`` relies on: exit codes, one-line errors, fast failure, and the
messages the CLI really puts on each node's queue (read back from Redis, as a worker would).

Exit codes: 0 all warm, 1 something missing or failed (or no node), 2 the broker or NATS
unreachable, or a wrong command line.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_testing import BAD, GOOD, celery, report, run

from localcluster import free_port
from localcluster.harness import wait_for
from localcluster.services import RedisServer
from tasks.bus import NatsBus
from tasks.routing import queue_for_node
from tasks.status import StatusStore

CONNECT_TIMEOUT = 4.0  # Celery's broker_connection_timeout, the product's default


def queued(env: dict[str, str], node: str) -> list[dict[str, Any]]:
    """The kwargs of each task waiting on ``node``'s queue in the Redis broker."""
    client = redis.Redis.from_url(env["WARM_BROKER_URL"])
    messages = [json.loads(raw) for raw in client.lrange(queue_for_node(node), 0, -1)]
    client.close()
    return [json.loads(base64.b64decode(message["body"]))[1] for message in messages]


def bool_queued(env: dict[str, str], node: str) -> bool:
    return bool(queued(env, node))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- rewarm ----------------------------------------------------------------------------------


def test_rewarm_of_an_image_not_in_the_catalog_fails_naming_it_and_sends_nothing(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, out, err = run(env, "rewarm", "--image", "nginx:1.27")

    assert code == 1
    line = one_line(err)
    assert "not in the catalog: docker.io/library/nginx:1.27" in line  # as normalized
    assert "--force" in line
    assert "re-warm sent" not in out
    assert all(queued(env, node) == [] for node in nodes)


def test_rewarm_force_sends_an_image_outside_the_catalog_to_every_node_once(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, out, err = run(env, "rewarm", "--image", "nginx:1.27", "--image", GOOD, "--force")

    assert code == 0, err
    assert "re-warm sent to 2 node(s)" in out
    for node in nodes:
        (sent,) = queued(env, node)
        assert sent["images"] == ["docker.io/library/nginx:1.27", GOOD]
        assert sent["unlisted"] == ["docker.io/library/nginx:1.27"]  # GOOD is in the catalog


def test_rewarm_retry_failed_asks_every_node_to_retry_its_failures(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, _, err = run(env, "rewarm", "--retry-failed")

    assert code == 0, err
    for node in nodes:
        (sent,) = queued(env, node)
        assert sent["retry_failed"] is True and "images" not in sent


@pytest.mark.parametrize(
    "args",
    [
        ["rewarm", "--timeout", "-1"],
        ["rewarm", "--timeout", "0"],
        ["rewarm", "--window", "0"],
        ["rewarm", "--window", "-5"],
        ["warm-status", "--refresh", "--timeout", "0"],
    ],
)
def test_non_positive_timeouts_and_windows_are_rejected(
    env: dict[str, str], nodes: list[str], args: list[str]
) -> None:
    code, out, err = run(env, *args)

    assert code == 2
    assert "Invalid value" in err and "re-warm sent" not in out
    assert all(queued(env, node) == [] for node in nodes)


# --- a broker that is down -------------------------------------------------------------------


@pytest.fixture(params=["stopped", "silent"])
def down_broker(request: pytest.FixtureRequest, workdir: Path) -> Iterator[str]:
    """A real Redis stopped (connection refused), or a port that accepts and never answers."""
    if request.param == "stopped":
        server = RedisServer(workdir / f"down-{free_port()}")
        server.start()
        server.stop()
        yield f"{server.url}/0"
        return
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:  # never accept()ed
        yield f"redis://127.0.0.1:{silent.getsockname()[1]}/0"


@pytest.mark.parametrize(
    "args", [["rewarm", "--wait"], ["warm-status"], ["warm-status", "--require", "reachable"]]
)
def test_a_broker_that_is_down_fails_within_the_connect_timeout_in_one_line(
    env: dict[str, str], nodes: list[str], down_broker: str, args: list[str]
) -> None:
    started = time.monotonic()
    _, _, _ = run(env, "catalog")  # the same start-up, broker untouched: the baseline
    start_up = time.monotonic() - started

    started = time.monotonic()
    code, _, err = run({**env, "WARM_BROKER_URL": down_broker}, *args)
    took = time.monotonic() - started

    assert code == 2
    line = one_line(err)  # no traceback, no "resending" lines
    port = down_broker.rsplit(":", 1)[1].split("/")[0]
    assert "broker at redis://" in line and f"127.0.0.1:{port}" in line
    assert line.endswith("(set WARM_BROKER_URL)")
    assert took < start_up + CONNECT_TIMEOUT + 1.5, (took, start_up)


# --- warm-status -----------------------------------------------------------------------------


def test_warm_status_exits_zero_only_when_every_node_holds_every_image(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    status = StatusStore(bus)
    for node in nodes:
        status.record_rewarm(node, [GOOD, BAD], revision=1, present=[GOOD, BAD])
    warm, _, _ = run(env, "warm-status")
    status.record_rewarm(nodes[1], [GOOD, BAD], revision=2, present=[GOOD])  # BAD removed
    missing, _, _ = run(env, "warm-status")
    reachable, _, _ = run(env, "warm-status", "--require", "reachable")
    one_node, _, _ = run(env, "warm-status", "--node", nodes[0])

    assert (warm, missing, reachable, one_node) == (0, 1, 0, 0)


def test_warm_status_of_a_cluster_without_nodes_exits_one(env: dict[str, str]) -> None:
    code, out, _ = run(env, "warm-status")

    assert code == 1
    assert "no node has reported yet" in out


def test_warm_status_says_its_figures_are_as_of_each_nodes_last_report(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    status = StatusStore(bus)
    for node in nodes:
        status.record_rewarm(node, [GOOD, BAD], revision=1, present=[GOOD])

    _, table, _ = run(env, "warm-status")
    _, single, _ = run(env, "warm-status", "--node", nodes[0])

    header = table.splitlines()[0]
    assert header.startswith("as of each node's last re-warm or pull; last change 20")
    assert " UTC (" in header and header.endswith("--refresh asks now")
    assert single.splitlines()[0].startswith(f"as of {nodes[0]}'s last re-warm or pull; ")
    assert table.splitlines()[1].split()[4] == "CHANGED"


def test_warm_status_refresh_asks_each_node_to_check_and_shows_its_fresh_report(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    status = StatusStore(bus)
    for node in nodes:  # an old report: everything warm
        status.record_rewarm(node, [GOOD, BAD], revision=1, present=[GOOD, BAD])
    process = celery(env, "warm-status", "--refresh", "--timeout", "30", "--json")

    for node in nodes:  # each node's worker: check the runtime, record, report
        wait_for(partial(bool_queued, env, node), 20, f"the check sent to {node}")
        (sent,) = queued(env, node)
        assert sent["check_only"] is True and "images" not in sent  # nothing to pull
        held = [GOOD] if node == nodes[0] else [GOOD, BAD]  # BAD was removed from nodes[0]
        status.record_rewarm(node, [GOOD, BAD], revision=sent["revision"], present=held)
        report(bus, node, sent["revision"], present=len(held))
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1, err  # BAD is missing on nodes[0] now
    by_node = {item["node"]: item for item in json.loads(out)["nodes"]}
    assert by_node[nodes[0]]["missing"] == [BAD] and by_node[nodes[1]]["missing"] == []


def test_warm_status_refresh_names_the_nodes_that_did_not_report_in_time(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    status = StatusStore(bus)
    for node in nodes:
        status.record_rewarm(node, [GOOD, BAD], revision=1, present=[GOOD, BAD])

    code, out, err = run(env, "warm-status", "--refresh", "--timeout", "1")

    assert code == 1
    assert "2 node(s) did not report within 1s, shown as of their last report" in err
    assert "2/2 node(s) fully warm" in out
