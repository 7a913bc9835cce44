"""``celery -A tasks rewarm`` and ``celery -A tasks warm-status``.

Registered as Celery CLI plugins (entry point group ``celery.commands`` in pyproject.toml), so
they take ``-A``, the broker and the rest of Celery's global options like built-in commands.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from celery.bin.base import CeleryCommand, CLIContext

from .bus import BusUnavailable, NatsBus
from .catalog import CatalogStore, UnknownNode
from .images import InvalidImageReference
from .names import REWARM_EVENTS
from .rewarm import RewarmSent, dispatch_rewarm
from .settings import load_settings
from .status import NodeStatus, StatusStore


@click.command(cls=CeleryCommand)
@click.option("--node", "nodes", multiple=True, help="Re-warm only this node (repeatable).")
@click.option("--image", "images", multiple=True, help="Re-warm only this image (repeatable).")
@click.option("--wait", is_flag=True, help="Wait for the nodes to report, then summarize.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def rewarm(
    ctx: click.Context, nodes: Sequence[str], images: Sequence[str], wait: bool, timeout: float
) -> None:
    """Re-warm the catalog now: one small task per node; each pulls only what it lacks."""
    cli: CLIContext = ctx.obj
    with _bus(cli) as bus:
        reports: queue.Queue[dict[str, Any]] = queue.Queue()
        if wait:
            bus.subscribe(f"{REWARM_EVENTS}.*", lambda _s, data: reports.put(json.loads(data)))
        try:
            sent = dispatch_rewarm(cli.app, CatalogStore(bus), nodes, images)
        except (UnknownNode, InvalidImageReference) as error:
            raise click.UsageError(str(error)) from error
        cli.echo(f"re-warm sent to {len(sent)} node(s)")
        if wait:
            _wait_for_reports(cli, sent, reports, timeout)


@click.command(cls=CeleryCommand, name="warm-status")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def warm_status(ctx: click.Context, nodes: Sequence[str], as_json: bool) -> None:
    """Per node: images warm / expected, missing, failed with the reason, last re-warm."""
    cli: CLIContext = ctx.obj
    with _bus(cli) as bus:
        store = StatusStore(bus)
        statuses = [store.get(node) for node in nodes] if nodes else store.all()
    if as_json:
        click.echo(json.dumps([status.summary() for status in statuses], indent=2))
        return
    _print_status_table(cli, statuses)


@contextmanager
def _bus(cli: CLIContext) -> Iterator[NatsBus]:
    bus = NatsBus(load_settings().nats)
    try:
        yield bus
    except BusUnavailable as error:
        raise click.ClickException(f"{error} (set WARM_NATS_URL)") from error
    finally:
        bus.close()


def _wait_for_reports(
    cli: CLIContext, sent: list[RewarmSent], reports: queue.Queue[dict[str, Any]], timeout: float
) -> None:
    pending = {item.node: item.revision for item in sent}
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while pending and (left := deadline - time.monotonic()) > 0:
        try:
            report = reports.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        node = report.get("node", "")
        if node in pending and report.get("revision", 0) >= pending[node]:
            pending.pop(node)
            done[node] = report
            cli.echo(f"  {node}: {_report_line(report)}")
    _print_summary(cli, done, pending)
    failed = any(report.get("failed") for report in done.values())
    if pending or failed:
        sys.exit(1)


def _report_line(report: dict[str, Any]) -> str:
    return (
        f"{report.get('pulled', 0)} pulled, {report.get('present', 0)} present, "
        f"{len(report.get('failed', {}))} failed in {report.get('seconds', 0):.1f}s"
    )


def _print_summary(
    cli: CLIContext, done: dict[str, dict[str, Any]], pending: dict[str, int]
) -> None:
    cli.echo(f"{len(done)} node(s) reported, {len(pending)} did not")
    for node, report in sorted(done.items()):
        for image, reason in sorted(report.get("failed", {}).items()):
            cli.echo(f"  FAILED {node} {image}: {reason}")
    for node in sorted(pending):
        cli.echo(f"  NO REPORT {node}")


def _print_status_table(cli: CLIContext, statuses: list[NodeStatus]) -> None:
    cli.echo(f"{'NODE':<30} {'WARM':>9}  {'LAST RE-WARM':<20} MISSING / FAILED")
    for status in sorted(statuses, key=lambda s: s.node):
        last = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.last_rewarm_at))
            if status.last_rewarm_at
            else "never"
        )
        warm = f"{len(status.warm)}/{len(status.expected)}"
        cli.echo(f"{status.node:<30} {warm:>9}  {last:<20} {len(status.missing)} missing")
        for image, reason in sorted(status.failed.items()):
            cli.echo(f"{'':<30} failed {image}: {reason}")
