"""The CLI as users run it (``celery -A tasks ...`` in a subprocess), against a private broker
and NATS, with node reports and statuses written by the test in the worker's place.

These check the commands' own logic (matching reports, exit codes, tables, JSON) quickly; the
e2e tests run the same commands against real workers and containerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping

from cli_testing import BAD, GOOD, answer_rewarm, celery, run

from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.models import NodeSlice, Outcome, PullResult, SliceImage, Wave, WaveState
from tasks.status import StatusStore


def test_rewarm_wait_exits_zero_and_summarizes_when_every_node_reports_success(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    process = celery(env, "rewarm", "--wait", "--timeout", "30")
    answer_rewarm(bus, process, **{n: {"pulled": 1, "present": 1, "seconds": 0.5} for n in nodes})
    out, err = process.communicate(timeout=60)

    assert process.returncode == 0, out + err
    assert f"[1/2] {nodes[0]}: ok  1 pulled, 1 present, 0 failed, 0 retrying in 0.5s" in out
    assert "all 2 node(s) re-warmed" in out
    header = next(line for line in out.splitlines() if line.startswith("NODE"))
    assert header.split() == ["NODE", "PULLED", "PRESENT", "FAILED", "RETRYING", "SECONDS"]


def test_rewarm_wait_exits_one_and_names_the_image_and_reason_when_a_pull_failed(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    reports: dict[str, Mapping[str, object]] = {
        nodes[0]: {"pulled": 1},
        nodes[1]: {"pulled": 1, "failed": {BAD: "not found"}},
    }
    process = celery(env, "rewarm", "--wait", "--timeout", "30")
    answer_rewarm(bus, process, **reports)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1, out + err
    assert f"failed   {BAD} on 1 node(s) ({nodes[1]}): not found" in out
    assert "1 image pull(s) failed" in out


def test_rewarm_wait_over_many_nodes_prints_totals_and_groups_failures_by_image(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    many = [f"{nodes[0]}-{i}" for i in range(60)]
    catalog = CatalogStore(bus)
    for node in many:
        catalog.put_slice(NodeSlice(node, (SliceImage(GOOD), SliceImage(BAD))))
    reports: dict[str, dict[str, object]] = {node: {"pulled": 1} for node in [*nodes, *many]}
    for node in many[:5]:
        reports[node] = {"pulled": 1, "failed": {BAD: "manifest unknown"}}
    process = celery(env, "rewarm", "--wait", "--timeout", "30")
    answer_rewarm(bus, process, **reports)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1, out + err
    assert len(out.splitlines()) < 20  # five failing nodes, a total row: not 62 rows
    total = next(line for line in out.splitlines() if line.startswith("62 node(s)"))
    assert total.split()[2:6] == ["62", "0", "5", "0"]
    shown = ", ".join(sorted(many[:5])[:3])
    assert f"failed   {BAD} on 5 node(s) ({shown} and 2 more): manifest unknown" in out
    _, status, _ = run(env, "warm-status")
    footer = ["0/62 node(s) fully warm", "per image: --node NAME, or --json"]
    lines = status.splitlines()
    at = lines.index(footer[0])
    assert lines[at : at + 2] == footer  # no per-image wall of text for 62 nodes
    assert not any(line.startswith(("missing", "failed")) for line in lines)


def test_rewarm_wait_exits_one_when_a_node_does_not_report_in_time(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    process = celery(env, "rewarm", "--wait", "--timeout", "2")
    answer_rewarm(bus, process, **{nodes[0]: {"pulled": 1}})
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1, out + err
    assert "1 node(s) did not report within 2s" in out
    assert f"{nodes[1]}" in out and "no report" in out


def test_rewarm_of_an_unknown_node_is_a_usage_error_and_sends_nothing(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, out, err = run(env, "rewarm", "--node", nodes[0], "--node", "ghost")

    assert code == 2
    assert "not in the catalog: ghost" in err
    assert "re-warm sent" not in out


def test_warm_status_shows_warm_over_expected_missing_and_failed_with_reasons(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    status = StatusStore(bus)
    status.record_rewarm(nodes[0], [GOOD, BAD], revision=3, present=[GOOD])
    status.record_many(nodes[0], [PullResult(nodes[0], BAD, Outcome.FAILED, "manifest unknown")])

    code, out, _ = run(env, "warm-status", "--json")
    code_table, table, _ = run(env, "warm-status", "--node", nodes[0])

    assert code == code_table == 1  # an image failed
    by_node = {item["node"]: item for item in json.loads(out)["nodes"]}
    assert by_node[nodes[0]]["warm_images"] == [GOOD]
    assert by_node[nodes[0]]["failed"] == {BAD: "manifest unknown"}
    assert by_node[nodes[0]]["last_rewarm_revision"] == 3
    assert by_node[nodes[1]]["warm"] == 0 and by_node[nodes[1]]["expected"] == 2  # never reported
    assert by_node[nodes[1]]["last_rewarm_at"] is None
    row = next(line for line in table.splitlines() if line.startswith(nodes[0]))
    assert row.split()[1:4] == ["1/2", "1", "1"]
    assert "s ago" in row
    assert f"failed   {nodes[0]}  {BAD}: manifest unknown" in table
    assert "0/1 node(s) fully warm" in table


def test_warm_status_names_what_a_stopped_wave_holds_back_and_exits_one(
    env: dict[str, str], bus: NatsBus, nodes: list[str]
) -> None:
    canary, held = nodes
    catalog, status = CatalogStore(bus), StatusStore(bus)
    catalog.put_slice(NodeSlice(held, (SliceImage(GOOD),), held=(BAD,)))  # as the watcher writes
    reason = "failed to copy: blob not found"
    catalog.put_wave(Wave(BAD, "sha256:0b", (canary,), WaveState.STOPPED, 1.0, canary, reason))
    status.record_rewarm(canary, [GOOD, BAD], revision=3, present=[GOOD])
    status.record_many(canary, [PullResult(canary, BAD, Outcome.FAILED, reason)])
    status.record_rewarm(held, [GOOD], revision=3, present=[GOOD])

    code, out, _ = run(env, "warm-status", "--json")
    code_table, table, _ = run(env, "warm-status")

    assert code == code_table == 1
    by_node = {item["node"]: item for item in json.loads(out)["nodes"]}
    stopped = f"wave stopped: canary {canary} failed: {reason}"
    assert by_node[held]["held"] == {BAD: stopped}
    assert by_node[held]["missing"] == [] and by_node[held]["expected"] == 1
    assert by_node[canary]["held"] == {} and by_node[canary]["failed"] == {BAD: reason}
    assert f"held     {BAD} on 1 node(s) ({held}): {stopped}" in table


def test_warm_status_of_an_unknown_node_is_a_usage_error(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, out, err = run(env, "warm-status", "--node", nodes[0], "--node", "ghost")

    assert code == 2
    assert "unknown node(s): ghost" in err and out == ""


def test_catalog_lists_images_with_their_workloads_and_target_nodes(
    env: dict[str, str], nodes: list[str]
) -> None:
    code, out, _ = run(env, "catalog", "--json")
    _, table, _ = run(env, "catalog")

    assert code == 0
    entries = {entry["image"]: entry for entry in json.loads(out)}
    assert entries[GOOD]["workloads"] == ["Deployment:default/web"]
    assert entries[GOOD]["target_nodes"] == 2
    assert table.splitlines()[0].split() == ["IMAGE", "NODES", "WORKLOADS"]
    row = [GOOD, "2", "Deployment:default/web", "(+2", "more)"]  # a sample of 3 workloads
    assert any(line.split() == row for line in table.splitlines())
    assert "2 image(s)" in table


def test_commands_fail_clearly_when_nats_is_unreachable(env: dict[str, str]) -> None:
    code, _, err = run({**env, "WARM_NATS_URL": "nats://127.0.0.1:1"}, "warm-status")

    assert code == 2
    assert "NATS" in err and "WARM_NATS_URL" in err


def test_rewarm_wait_draws_a_live_progress_bar_on_a_terminal_only(
    env: dict[str, str], nodes: list[str]
) -> None:
    leader, follower = os.openpty()
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "rewarm", "--wait", "--timeout", "2"]
    process = subprocess.Popen([*argv, "--node", nodes[0]], env=env, stdout=follower)
    os.close(follower)
    process.wait(timeout=60)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    _, piped, _ = run(env, "rewarm", "--wait", "--timeout", "1", "--node", nodes[0])

    assert process.returncode == 1
    assert b"\r[..............................] 0/1 node(s) reported, 1s" in shown
    assert "\r" not in piped  # no carriage returns in logs and scripts
