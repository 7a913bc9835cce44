"""The node agent: everything one node worker process holds, and what a task asks of it.

One agent per process (the worker runs a thread pool, so per worker), built at start-up: the
runtime driver, the puller, the NATS bus, and the catalog and status stores. Task bodies in
:mod:`worker.tasks` stay thin wrappers over :meth:`NodeAgent.pull` and
:meth:`NodeAgent.rewarm`, so the logic is testable without a broker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.images import ImageRef, InvalidImageReference, parse_image
from tasks.models import Outcome, PullResult
from tasks.names import pull_events_subject, rewarm_events_subject
from tasks.settings import Settings
from tasks.status import StatusStore

from .puller import Puller, is_present
from .runtime import FailureKind, ImageRuntime, PullFailed, RuntimeImage, RuntimeUnavailable

log = logging.getLogger(__name__)


@dataclass
class RewarmReport:
    node: str
    revision: int
    pulled: int = 0
    present: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    retrying: list[str] = field(default_factory=list)
    seconds: float = 0.0


class NodeAgent:
    def __init__(self, settings: Settings, node: str, runtime: ImageRuntime, bus: NatsBus) -> None:
        self.settings = settings
        self.node = node
        self.runtime = runtime
        self.bus = bus
        self.catalog = CatalogStore(bus)
        self.status = StatusStore(bus)
        self.puller = Puller(
            runtime,
            max_concurrent=settings.runtime.max_concurrent_pulls,
            timeout=settings.runtime.pull_timeout,
        )

    def pull(
        self,
        reference: str,
        *,
        attempt: int = 1,
        held: RuntimeImage | None = None,
        known_absent: bool = False,
    ) -> PullResult:
        """Make one image present and report the result; never raises for a bad image."""
        started = time.perf_counter()
        try:
            image = parse_image(reference)
            done = self.puller.ensure(image, held=held, known_absent=known_absent)
        except InvalidImageReference as error:
            result = self._result(reference, Outcome.FAILED, error.rule, started, attempt)
        except PullFailed as error:
            outcome = Outcome.RETRYING if error.kind is FailureKind.TRANSIENT else Outcome.FAILED
            result = self._result(reference, outcome, error.reason, started, attempt)
        except RuntimeUnavailable as error:
            result = self._result(reference, Outcome.RETRYING, str(error), started, attempt)
        else:
            result = PullResult(
                node=self.node,
                image=str(image),
                outcome=done.outcome,
                seconds=round(done.seconds, 4),
                size=done.size,
                image_id=done.image_id,
                attempt=attempt,
            )
        self.report(result)
        return result

    def rewarm(self, revision: int, images: list[str]) -> RewarmReport:
        """Diff this node's catalog slice against the runtime; pull only what is missing."""
        started = time.perf_counter()
        node_slice, current = self.catalog.get_slice(self.node)
        wanted = [item.image for item in node_slice.images]
        if images:
            wanted = [image for image in wanted if image in images]
        self.status.record_rewarm(self.node, [i.image for i in node_slice.images], current)
        held = self.runtime.list_images()  # once: ListImages ignores filters, so filter here
        report = RewarmReport(node=self.node, revision=max(revision, current))
        missing = []
        for reference in wanted:
            found = _held_as(reference, held)
            if found is None:
                missing.append(reference)
            else:
                report.present += 1
        workers = max(1, self.settings.runtime.max_concurrent_pulls)
        with ThreadPoolExecutor(workers, thread_name_prefix="rewarm") as pool:
            results = list(pool.map(lambda ref: self.pull(ref, known_absent=True), missing))
        for result in results:
            _count(report, result)
        report.seconds = round(time.perf_counter() - started, 4)
        self._publish(rewarm_events_subject(self.node), _report_json(report))
        return report

    def report(self, result: PullResult) -> None:
        """Publish ``result`` and record it in the node's status; best effort when NATS is down."""
        log.info(
            "%s %s on %s in %.2fs %s",
            result.outcome,
            result.image,
            result.node,
            result.seconds,
            result.reason,
        )
        self._publish(pull_events_subject(self.node), result.to_json())
        try:
            self.status.record(result)
        except BusUnavailable as error:
            log.warning("status of %s not recorded: %s", result.image, error)

    def _publish(self, subject: str, payload: bytes) -> None:
        try:
            self.bus.publish(subject, payload)
        except BusUnavailable as error:
            log.warning("event on %s not published: %s", subject, error)

    def _result(
        self, image: str, outcome: Outcome, reason: str, started: float, attempt: int
    ) -> PullResult:
        seconds = round(time.perf_counter() - started, 4)
        return PullResult(self.node, image, outcome, reason, seconds, attempt=attempt)


def _held_as(reference: str, held: list[RuntimeImage]) -> RuntimeImage | None:
    try:
        image: ImageRef = parse_image(reference)
    except InvalidImageReference:
        return None
    return next((item for item in held if is_present(image, item)), None)


def _count(report: RewarmReport, result: PullResult) -> None:
    if result.outcome is Outcome.PULLED:
        report.pulled += 1
    elif result.outcome is Outcome.PRESENT:
        report.present += 1
    elif result.outcome is Outcome.RETRYING:
        report.retrying.append(result.image)
    else:
        report.failed[result.image] = result.reason


def _report_json(report: RewarmReport) -> bytes:
    return json.dumps(asdict(report), sort_keys=True).encode()


_agent: NodeAgent | None = None
_agent_lock = threading.Lock()


def install_agent(agent: NodeAgent) -> None:
    global _agent
    with _agent_lock:
        _agent = agent


def current_agent() -> NodeAgent:
    if _agent is None:
        raise RuntimeError("the node agent is not started (run the worker with python -m worker)")
    return _agent
