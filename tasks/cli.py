"""``celery -A tasks rewarm``, ``celery -A tasks warm-status`` and ``celery -A tasks catalog``.

Registered as Celery CLI plugins (entry point group ``celery.commands`` in pyproject.toml), so
they take ``-A``, the broker and the rest of Celery's global options like built-in commands.

Tables are for people, ``--json`` is for scripts, and the exit code is for CI and ``helm test``:
0 all is warm, 1 something is missing or failed (or a node did not report in time), 2 the broker
or NATS could not be reached (or the command line is wrong). An unreachable service is one line
naming the setting to check, within its connect timeout: never a traceback or a retry loop.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import nats.errors
from celery import Celery
from celery.bin.base import CeleryCommand, CLIContext
from kombu.exceptions import KombuError

from .bus import BusUnavailable, NatsBus
from .catalog import CatalogStore, UnknownImage, UnknownNode
from .images import InvalidImageReference
from .kubelet import KubeletCounts, KubeletStore, KubeletSummary
from .models import CatalogEntry, Wave
from .names import REWARM_EVENTS
from .rewarm import RewarmSent, dispatch_rewarm
from .routing import InvalidNodeName
from .settings import load_settings
from .status import NodeStatus, StatusStore

Report = dict[str, Any]

MAX_LISTED = 10  # missing images listed per node in the table; --json lists them all
MAX_ROWS = 50  # nodes listed one by one by rewarm --wait; past it, totals and failures only
EXIT_INCOMPLETE = 1
EXIT_UNREACHABLE = 2
POSITIVE = click.FloatRange(min=0, min_open=True)


class Unreachable(click.ClickException):
    """The broker or NATS did not answer; the message names the setting to check."""

    exit_code = EXIT_UNREACHABLE


@click.command(cls=CeleryCommand)
@click.option("--node", "nodes", multiple=True, help="Re-warm only this node (repeatable).")
@click.option("--image", "images", multiple=True, help="Re-warm only this image (repeatable).")
@click.option(
    "--force", is_flag=True, help="Warm an --image the catalog lacks anyway, once (not kept warm)."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Retry images that failed for good, which periodic re-warms skip.",
)
@click.option("--wait", is_flag=True, help="Follow the nodes' reports, then summarize.")
@click.option("--timeout", type=POSITIVE, default=600.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--window",
    type=POSITIVE,
    default=None,
    help="Spread the sends over this many seconds (default: all at once).",
)
@click.pass_context
def rewarm(
    ctx: click.Context,
    nodes: Sequence[str],
    images: Sequence[str],
    force: bool,
    retry_failed: bool,
    wait: bool,
    timeout: float,
    window: float | None,
) -> None:
    """Re-warm now: one small task per node; each pulls only what it lacks.

    With --wait, exits 1 when an image could not be pulled or a node did not report in time;
    exits 2 when the broker or NATS cannot be reached.
    """
    if force and not images:
        raise click.UsageError("--force goes with --image: it warms images the catalog lacks")
    cli: CLIContext = ctx.obj
    _check_broker(cli.app)
    with _bus() as bus:
        reports: queue.Queue[Report] = queue.Queue()
        if wait:  # before sending, or a fast node's report is missed
            bus.subscribe(f"{REWARM_EVENTS}.>", lambda _s, data: reports.put(json.loads(data)))
        options = {"window": window or 0.0, "force": force, "retry_failed": retry_failed}
        sent = _send(cli.app, bus, nodes, images, **options)
        revision = sent[0].revision if sent else 0
        click.echo(f"re-warm sent to {len(sent)} node(s) at catalog revision {revision}")
        if wait and sent:
            ok = _follow(sent, reports, timeout)
            sys.exit(0 if ok else EXIT_INCOMPLETE)


@click.command(cls=CeleryCommand, name="warm-status")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Ask the nodes to re-check their runtimes now (nothing is pulled) and wait for them.",
)
@click.option(
    "--timeout",
    type=POSITIVE,
    default=30.0,
    show_default=True,
    help="Seconds --refresh waits for the nodes' reports.",
)
@click.option(
    "--require",
    type=click.Choice(["warm", "reachable"]),
    default="warm",
    show_default=True,
    help="What exit code 0 requires: every image warm, or only the broker and NATS answering "
    "(the chart's helm test).",
)
@click.pass_context
def warm_status(
    ctx: click.Context,
    nodes: Sequence[str],
    as_json: bool,
    refresh: bool,
    timeout: float,
    require: str,
) -> None:
    """Per node: images warm / expected, missing, failed with the reason, as of its last report;
    images a wave holds back (waiting for a canary, or stopped by a canary's failure); and the
    kubelets' own word: warm hits and cold pulls, and the images pods still wait for.

    Exit code: 0 every node holds every image, 1 something is missing, failed or held back (or
    no node has reported), 2 the broker or NATS cannot be reached.
    """
    cli: CLIContext = ctx.obj
    _check_broker(cli.app)
    with _bus() as bus:
        late = _refresh(cli.app, bus, nodes, timeout) if refresh else []
        statuses = _statuses(bus, nodes)
        kubelet = _kubelet(bus, statuses)
    if as_json:
        entries = [{**s.summary(), "kubelet": kubelet.nodes[s.node].node_json()} for s in statuses]
        report = {"nodes": entries, "kubelet": kubelet.summary.report()}
        click.echo(json.dumps(report, indent=2))
    else:
        _print_status(statuses, kubelet)
    if late:
        click.secho(
            f"{len(late)} node(s) did not report within {timeout:g}s, shown as of their last "
            f"report: {_nodes(late)}",
            fg="red",
            err=True,
        )
    warm = bool(statuses) and not late and not any(s.missing or s.held for s in statuses)
    sys.exit(0 if warm or require == "reachable" else EXIT_INCOMPLETE)


def _send(
    app: Celery, bus: NatsBus, nodes: Sequence[str], images: Sequence[str], **options: Any
) -> list[RewarmSent]:
    """dispatch_rewarm, failing at once with one line when the broker fails mid-way."""
    app.conf.task_publish_retry = False  # the broker answered a moment ago: no retry loop
    try:
        return dispatch_rewarm(app, bus, nodes, images, broker_patience=0, **options)
    except (UnknownNode, InvalidImageReference, InvalidNodeName) as error:
        raise click.UsageError(str(error)) from error
    except UnknownImage as error:
        raise click.ClickException(
            f"{error}: `celery -A tasks catalog` lists the images in use; "
            "--force warms it anyway, once"
        ) from error
    except (KombuError, OSError) as error:
        raise Unreachable(f"broker failed: {error} (set WARM_BROKER_URL)") from error


def _refresh(app: Celery, bus: NatsBus, nodes: Sequence[str], timeout: float) -> list[str]:
    """Ask the nodes to check their runtimes (a re-warm that pulls nothing) and wait for their
    reports; the nodes that did not report in time."""
    reports: queue.Queue[Report] = queue.Queue()
    bus.subscribe(f"{REWARM_EVENTS}.>", lambda _s, data: reports.put(json.loads(data)))
    sent = _send(app, bus, nodes, (), check_only=True)
    reported = {node for node, _ in _arrivals(sent, reports, timeout)}
    return sorted({item.node for item in sent} - reported)


def _check_broker(app: Celery) -> None:
    """One connection to the broker, given its connect timeout (broker_connection_timeout)
    and no more: a broker that accepts the connection but never answers counts as down too."""
    timeout = float(app.conf.broker_connection_timeout or 4.0)
    connection = app.connection_for_write()
    where = connection.as_uri()  # the password masked
    failures: list[Exception] = []

    def connect() -> None:
        try:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
        except Exception as error:  # whatever the transport raises, it is reported in one line
            failures.append(error)
        else:
            connection.release()

    attempt = threading.Thread(target=connect, name="broker-check", daemon=True)
    attempt.start()
    attempt.join(timeout)
    if attempt.is_alive():
        raise Unreachable(
            f"broker at {where} did not answer within {timeout:g}s (set WARM_BROKER_URL)"
        )
    if failures:
        raise Unreachable(f"broker at {where} unreachable: {failures[0]} (set WARM_BROKER_URL)")


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
        raise Unreachable(f"{error} (set WARM_NATS_URL)") from error
    finally:
        bus.close()


def _statuses(bus: NatsBus, nodes: Sequence[str]) -> list[NodeStatus]:
    """Each node's status, measured against its catalog slice now (not at its last re-warm).

    A node named on the command line that neither the catalog nor any status knows is a typo,
    and a usage error, rather than a row of zeros.
    """
    catalog, store = CatalogStore(bus), StatusStore(bus)
    names = list(nodes) or sorted(set(catalog.nodes()) | set(store.nodes()))
    waves = catalog.waves()
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
        held = {image: _wave_state(waves.get(image)) for image in sorted(node_slice.held)}
        statuses.append(dataclasses.replace(status, expected=expected, held=held))
    if unknown:
        raise click.UsageError(f"unknown node(s): {', '.join(unknown)}")
    return statuses


@dataclasses.dataclass(frozen=True)
class _Kubelet:
    """What the kubelets reported, as the watcher counted it: per node, and overall."""

    nodes: dict[str, KubeletCounts]
    summary: KubeletSummary


def _kubelet(bus: NatsBus, statuses: list[NodeStatus]) -> _Kubelet:
    """The counts, or none when there are none to read: the leading watcher makes the bucket,
    which a client role may read but not make."""
    nothing = _Kubelet({status.node: KubeletCounts() for status in statuses}, KubeletSummary())
    if not load_settings().watch.kubelet_events:  # WARM_KUBELET_EVENTS=false: none are counted
        return nothing
    store = KubeletStore(bus)
    try:
        nodes = {status.node: store.get_node(status.node) for status in statuses}
        return _Kubelet(nodes, store.get_summary() or KubeletSummary())
    except (BusUnavailable, nats.errors.Error):
        return nothing


# --- rewarm --wait -------------------------------------------------------------------------


def _follow(sent: list[RewarmSent], reports: queue.Queue[Report], timeout: float) -> bool:
    """Print each node's report as it arrives, then a summary; True when all is warm."""
    done: dict[str, Report] = {}
    live = sys.stdout.isatty()

    def waiting(reported: int, elapsed: float) -> None:
        if live:
            _progress(reported, len(sent), elapsed)

    for node, report in _arrivals(sent, reports, timeout, waiting):
        done[node] = report
        if len(sent) <= MAX_ROWS or report.get("failed"):  # thousands: the bar, failures
            _clear_progress(live)
            click.echo(f"[{len(done)}/{len(sent)}] {_report_line(node, report)}")
    _clear_progress(live)
    pending = sorted({item.node for item in sent} - set(done))
    _print_summary(done, pending, timeout)
    return not pending and not any(report.get("failed") for report in done.values())


def _arrivals(
    sent: list[RewarmSent],
    reports: queue.Queue[Report],
    timeout: float,
    waiting: Callable[[int, float], None] = lambda _reported, _elapsed: None,
) -> Iterator[tuple[str, Report]]:
    """Each node's report for the re-warm it was sent, as it comes, until ``timeout``.

    A report for an older revision answers an older re-warm, not this one.
    """
    pending = {item.node: item.revision for item in sent}
    started = time.monotonic()
    while pending and (left := started + timeout - time.monotonic()) > 0:
        waiting(len(sent) - len(pending), time.monotonic() - started)
        try:
            report = reports.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        node = report.get("node", "")
        if report.get("revision", 0) >= pending.get(node, sys.maxsize):
            del pending[node]
            yield node, report


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


def _wave_state(wave: Wave | None) -> str:
    return wave.describe() if wave is not None else "held back by a wave"


def _print_status(statuses: list[NodeStatus], kubelet: _Kubelet) -> None:
    click.echo(_as_of(statuses))
    rows = [
        [
            status.node,
            f"{len(status.warm)}/{len(status.expected)}",
            str(len(status.missing)),
            str(len(status.failed)),
            _ago(_changed_at(status)),
            _hits(kubelet.nodes[status.node]),
        ]
        for status in statuses
    ]
    # A no-op re-warm writes no record: CHANGED is its last change.
    _table(["NODE", "WARM", "MISSING", "FAILED", "CHANGED", "KUBELET HITS"], rows)
    warm = sum(1 for status in statuses if not status.missing)
    click.echo(f"{warm}/{len(statuses)} node(s) fully warm")
    _print_held(statuses)
    if len(statuses) > MAX_ROWS:  # image by image for thousands of nodes is a wall of text
        click.echo("per image: --node NAME, or --json")
    else:
        _print_not_warm(statuses)
    _print_kubelet(kubelet.summary)


def _print_not_warm(statuses: list[NodeStatus]) -> None:
    for status in statuses:
        for image, reason in sorted(status.failed.items()):
            click.secho(f"failed   {status.node}  {image}: {reason}", fg="red")
        missing = [image for image in status.missing if image not in status.failed]
        for image in missing[:MAX_LISTED]:
            click.echo(f"missing  {status.node}  {image}")
        if len(missing) > MAX_LISTED:
            click.echo(f"missing  {status.node}  ... and {len(missing) - MAX_LISTED} more (--json)")


def _hits(counts: KubeletCounts) -> str:
    """``hits/pulls (ratio)``, or ``-`` before the kubelet reported any pull."""
    if counts.ratio is None:
        return "-"
    return f"{counts.hits}/{counts.hits + counts.misses} ({counts.ratio:.0%})"


def _print_kubelet(summary: KubeletSummary) -> None:
    """The warm-hit ratio, in the kubelets' own words, and what cold pulls still cost."""
    totals, apart = summary.totals, summary.not_in_catalog_totals
    if totals.ratio is None and apart.ratio is None:
        click.echo("kubelet: no image pull reported yet")
        return
    if totals.ratio is not None:
        click.echo(
            f"kubelet: warm-hit ratio {totals.ratio:.1%} ({totals.hits} hits, {totals.misses} "
            f"cold pulls); pods waited {totals.seconds_waited:.1f}s on cold pulls, warm images "
            f"saved them about {totals.seconds_saved:.1f}s"
        )
    lost = summary.top_lost(MAX_LISTED)
    if lost:
        click.echo("time still lost to cold pulls, by image:")
        rows = [[image, str(c.misses), f"{c.seconds_waited:.1f}s"] for image, c in lost]
        _table(["IMAGE", "COLD PULLS", "WAITED"], rows)
    if apart.ratio is not None:
        click.echo(
            f"not in the catalog: {apart.hits} hits, {apart.misses} cold pulls, pods waited "
            f"{apart.seconds_waited:.1f}s (images the selection leaves out; --json lists them)"
        )


def _print_held(statuses: list[NodeStatus]) -> None:
    """One line per image a wave holds back: where the wave stands and from how many nodes."""
    held: dict[tuple[str, str], list[str]] = {}
    for status in statuses:
        for image, state in status.held.items():
            held.setdefault((image, state), []).append(status.node)
    for (image, state), nodes in sorted(held.items()):
        colour = "red" if state.startswith("wave stopped") else "yellow"
        click.secho(f"held     {image} on {_nodes(nodes)}: {state}", fg=colour)


def _as_of(statuses: list[NodeStatus]) -> str:
    """The table is the nodes' records, not the runtimes now: say as of when.

    A node checks its runtime at every re-warm and writes its record only when something
    changed, so the record holds as of its last re-warm; the time known is its last change.
    """
    times = sorted(at for at in map(_changed_at, statuses) if at)
    if not times:
        return "as of: no node has reported yet"
    span = _when(times[0]) if times[0] == times[-1] else f"{_when(times[0])} to {_when(times[-1])}"
    whose = f"{statuses[0].node}'s" if len(statuses) == 1 else "each node's"
    return f"as of {whose} last re-warm or pull; last change {span}; --refresh asks now"


def _changed_at(status: NodeStatus) -> float | None:
    """When the node last changed its record: a re-warm that found a change, or a pull."""
    times = [status.last_rewarm_at or 0.0, *(image.at for image in status.images.values())]
    return max(times) or None


def _when(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{moment} ({_ago(timestamp)})"


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
