"""``celery -A tasks rewarm``, ``celery -A tasks warm-status`` and ``celery -A tasks catalog``.

Registered as Celery CLI plugins (entry point group ``celery.commands`` in pyproject.toml), so
they take ``-A``, the broker and the rest of Celery's global options like built-in commands.

Tables are for people, ``--json`` is for scripts, and the exit code is for CI: ``rewarm
--wait`` fails when a pull failed or a node did not report in time.
"""

from __future__ import annotations

import dataclasses
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
from .models import CatalogEntry
from .names import REWARM_EVENTS
from .rewarm import RewarmSent, dispatch_rewarm
from .routing import InvalidNodeName
from .settings import load_settings
from .status import NodeStatus, StatusStore

Report = dict[str, Any]

MAX_LISTED = 10  # missing images listed per node in the table; --json lists them all
MAX_ROWS = 50  # nodes listed one by one by rewarm --wait; past it, totals and failures only


@click.command(cls=CeleryCommand)
@click.option("--node", "nodes", multiple=True, help="Re-warm only this node (repeatable).")
@click.option("--image", "images", multiple=True, help="Re-warm only this image (repeatable).")
@click.option("--wait", is_flag=True, help="Follow the nodes' reports, then summarize.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--window",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Spread the sends over this many seconds (beat uses WARM_REWARM_WINDOW).",
)
@click.pass_context
def rewarm(
    ctx: click.Context,
    nodes: Sequence[str],
    images: Sequence[str],
    wait: bool,
    timeout: float,
    window: float,
) -> None:
    """Re-warm now: one small task per node; each pulls only what it lacks.

    With --wait, exits 1 when an image could not be pulled or a node did not report in time.
    """
    cli: CLIContext = ctx.obj
    with _bus() as bus:
        reports: queue.Queue[Report] = queue.Queue()
        if wait:  # before sending, or a fast node's report is missed
            bus.subscribe(f"{REWARM_EVENTS}.>", lambda _s, data: reports.put(json.loads(data)))
        try:
            sent = dispatch_rewarm(cli.app, bus, nodes, images, window=window)
        except (UnknownNode, InvalidImageReference, InvalidNodeName) as error:
            raise click.UsageError(str(error)) from error
        revision = sent[0].revision if sent else 0
        click.echo(f"re-warm sent to {len(sent)} node(s) at catalog revision {revision}")
        if wait and sent:
            ok = _follow(sent, reports, timeout)
            sys.exit(0 if ok else 1)


@click.command(cls=CeleryCommand, name="warm-status")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def warm_status(nodes: Sequence[str], as_json: bool) -> None:
    """Per node: images warm / expected, missing, failed with the reason, last change."""
    with _bus() as bus:
        statuses = _statuses(bus, nodes)
    if as_json:
        click.echo(json.dumps([status.summary() for status in statuses], indent=2))
    else:
        _print_status(statuses)


@click.command(cls=CeleryCommand, name="catalog")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def catalog(as_json: bool) -> None:
    """The images in use: the workloads that use them and how many nodes they belong on."""
    with _bus() as bus:
        entries = CatalogStore(bus).entries()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(entry) for entry in entries], indent=2))
        return
    rows = [[entry.image, str(entry.target_nodes), _workloads(entry)] for entry in entries]
    _table(["IMAGE", "NODES", "WORKLOADS"], rows, left=(0, 2))
    click.echo(f"{len(entries)} image(s)")


def _workloads(entry: CatalogEntry) -> str:
    listed = ", ".join(entry.workloads) or "(explicit)"
    more = entry.workload_count - len(entry.workloads)  # the entry holds a sample of them
    return f"{listed} (+{more} more)" if more > 0 else listed


@contextmanager
def _bus() -> Iterator[NatsBus]:
    bus = NatsBus(load_settings().nats)
    try:
        yield bus
    except BusUnavailable as error:
        raise click.ClickException(f"{error} (set WARM_NATS_URL)") from error
    finally:
        bus.close()


def _statuses(bus: NatsBus, nodes: Sequence[str]) -> list[NodeStatus]:
    """Each node's status, measured against its catalog slice now (not at its last re-warm).

    A node named on the command line that neither the catalog nor any status knows is a typo,
    and a usage error, rather than a row of zeros.
    """
    catalog, store = CatalogStore(bus), StatusStore(bus)
    names = list(nodes) or sorted(set(catalog.nodes()) | set(store.nodes()))
    statuses, unknown = [], []
    for node in names:
        status = store.get(node)
        try:
            node_slice, _ = catalog.get_slice(node)
        except (UnknownNode, InvalidNodeName):
            if not status.reported:
                unknown.append(node)
            statuses.append(status)
            continue
        expected = sorted(item.image for item in node_slice.images)
        statuses.append(dataclasses.replace(status, expected=expected))
    if unknown:
        raise click.UsageError(f"unknown node(s): {', '.join(unknown)}")
    return statuses


# --- rewarm --wait -------------------------------------------------------------------------


def _follow(sent: list[RewarmSent], reports: queue.Queue[Report], timeout: float) -> bool:
    """Print each node's report as it arrives, then a summary; True when all is warm."""
    pending = {item.node: item.revision for item in sent}
    done: dict[str, Report] = {}
    live = sys.stdout.isatty()
    started = time.monotonic()
    while pending and (left := started + timeout - time.monotonic()) > 0:
        if live:
            _progress(len(done), len(sent), time.monotonic() - started)
        try:
            report = reports.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        node = report.get("node", "")
        if report.get("revision", 0) >= pending.get(node, sys.maxsize):
            del pending[node]
            done[node] = report
            if len(sent) <= MAX_ROWS or report.get("failed"):  # thousands: the bar, failures
                _clear_progress(live)
                click.echo(f"[{len(done)}/{len(sent)}] {_report_line(node, report)}")
    _clear_progress(live)
    _print_summary(done, sorted(pending), timeout)
    return not pending and not any(report.get("failed") for report in done.values())


def _progress(reported: int, total: int, elapsed: float) -> None:
    bar_width = 30
    filled = bar_width * reported // total
    bar = "#" * filled + "." * (bar_width - filled)
    click.echo(f"\r[{bar}] {reported}/{total} node(s) reported, {elapsed:.0f}s ", nl=False)


def _clear_progress(live: bool) -> None:
    if live:
        click.echo("\r\033[K", nl=False)


def _report_line(node: str, report: Report) -> str:
    failed = len(report.get("failed", {}))
    verdict = click.style("FAILED", fg="red") if failed else click.style("ok", fg="green")
    return (
        f"{node}: {verdict}  {report.get('pulled', 0)} pulled, {report.get('present', 0)} "
        f"present, {failed} failed, {len(report.get('retrying', []))} retrying "
        f"in {report.get('seconds', 0):.1f}s"
    )


def _print_summary(done: dict[str, Report], pending: list[str], timeout: float) -> None:
    """A row per node (a total row past MAX_ROWS nodes), then failures grouped by image."""
    header = ["NODE", "PULLED", "PRESENT", "FAILED", "RETRYING", "SECONDS"]
    if len(done) + len(pending) <= MAX_ROWS:
        rows = [[node, *_counts(report)] for node, report in sorted(done.items())]
        rows += [[node, "-", "-", "-", "-", "no report"] for node in pending]
    else:
        total = [sum(int(_counts(r)[i]) for r in done.values()) for i in range(4)]
        slowest = max((float(r.get("seconds", 0)) for r in done.values()), default=0.0)
        rows = [[f"{len(done)} node(s)", *map(str, total), f"max {slowest:.1f}"]]
        rows += [[f"{len(pending)} node(s)", "-", "-", "-", "-", "no report"]] if pending else []
    click.echo()
    _table(header, rows)
    for (image, reason), nodes in sorted(_by_image(done, "failed").items()):
        click.secho(f"failed   {image} on {_nodes(nodes)}: {reason}", fg="red")
    for (image, _), nodes in sorted(_by_image(done, "retrying").items()):
        click.secho(f"retrying {image} on {_nodes(nodes)} (transient error)", fg="yellow")
    failures = sum(len(report.get("failed", {})) for report in done.values())
    if pending:
        click.secho(f"{len(pending)} node(s) did not report within {timeout:.0f}s", fg="red")
    if failures:
        click.secho(f"{failures} image pull(s) failed", fg="red")
    if not pending and not failures:
        click.secho(f"all {len(done)} node(s) re-warmed", fg="green")


def _counts(report: Report) -> list[str]:
    return [
        str(report.get("pulled", 0)),
        str(report.get("present", 0)),
        str(len(report.get("failed", {}))),
        str(len(report.get("retrying", []))),
        f"{report.get('seconds', 0):.1f}",
    ]


def _by_image(done: dict[str, Report], kind: str) -> dict[tuple[str, str], list[str]]:
    """(image, reason) -> nodes: one line for an image that failed on 4,000 nodes alike."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for node, report in sorted(done.items()):
        found = report.get(kind) or {}
        reasons = found if isinstance(found, dict) else dict.fromkeys(found, "")
        for image, reason in reasons.items():
            grouped.setdefault((image, reason), []).append(node)
    return grouped


def _nodes(nodes: list[str], shown: int = 3) -> str:
    listed = ", ".join(nodes[:shown]) + (
        f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    )
    return f"{len(nodes)} node(s) ({listed})"


# --- warm-status ---------------------------------------------------------------------------


def _print_status(statuses: list[NodeStatus]) -> None:
    rows = [
        [
            status.node,
            f"{len(status.warm)}/{len(status.expected)}",
            str(len(status.missing)),
            str(len(status.failed)),
            _ago(status.last_rewarm_at),
        ]
        for status in statuses
    ]
    _table(["NODE", "WARM", "MISSING", "FAILED", "CHANGED"], rows)  # a no-op re-warm writes none
    warm = sum(1 for status in statuses if not status.missing)
    click.echo(f"{warm}/{len(statuses)} node(s) fully warm")
    if len(statuses) > MAX_ROWS:  # image by image for thousands of nodes is a wall of text
        click.echo("per image: --node NAME, or --json")
        return
    for status in statuses:
        for image, reason in sorted(status.failed.items()):
            click.secho(f"failed   {status.node}  {image}: {reason}", fg="red")
        missing = [image for image in status.missing if image not in status.failed]
        for image in missing[:MAX_LISTED]:
            click.echo(f"missing  {status.node}  {image}")
        if len(missing) > MAX_LISTED:
            click.echo(f"missing  {status.node}  ... and {len(missing) - MAX_LISTED} more (--json)")


def _ago(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> None:
    """Columns fitted to their content: text (``left``) aligned left, numbers right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    click.echo(line(header))
    for row in rows:
        click.echo(line(row))
