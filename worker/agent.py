"""The node agent: everything one node worker process holds, and what a task asks of it.

One agent per process (the worker runs a thread pool, so per worker), built at start-up: the
runtime driver, the puller, the NATS bus, and the catalog and status stores. Task bodies in
:mod:`worker.handlers` stay thin wrappers over :meth:`NodeAgent.pull` and
:meth:`NodeAgent.rewarm`, so the logic is testable without a broker.

A permanent failure (missing tag, unauthorized, bad reference) is remembered with the catalog
entry it failed under, and periodic re-warms skip it until that entry changes (new pull secrets,
a new digest) or a pull task or an explicit re-warm of that image asks again: a catalog full
of typos costs one registry request per image, not one per re-warm.

An image a wave holds back from this node (named under ``held`` in its slice, see
watcher/waves.py) is in no re-warm's diff, and a pull task for it is skipped: until a canary
holds it, only the canaries pull it.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore, UnknownNode
from tasks.images import ImageRef, InvalidImageReference, parse_image
from tasks.models import Outcome, PullResult, SliceImage, Trigger
from tasks.names import pull_events_subject, rewarm_events_subject
from tasks.settings import Settings
from tasks.status import StatusStore

from . import metrics
from .credentials import CredentialSource
from .permits import node_permits
from .puller import DiskBudgetExceeded, Puller, is_present
from .runtime import FailureKind, ImageRuntime, PullFailed, RuntimeImage, RuntimeUnavailable

log = logging.getLogger(__name__)

# A re-warm checks every image of the slice, and the slice's references are the same from one
# re-warm to the next (a class slice never changes under its hash): each is parsed once.
_parsed = functools.lru_cache(maxsize=2**15)(parse_image)


class HeldBack(Exception):
    """A wave holds the image back from this node until a canary holds it (watcher/waves.py):
    the pull is skipped, not failed."""


@dataclass
class RewarmReport:
    node: str
    revision: int
    pulled: int = 0
    present: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    retrying: list[str] = field(default_factory=list)
    seconds: float = 0.0
    trigger: Trigger = Trigger.REWARM


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        node: str,
        runtime: ImageRuntime,
        bus: NatsBus,
        *,
        credentials: CredentialSource | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.runtime = runtime
        self.bus = bus
        self.catalog = CatalogStore(bus)
        self.status = StatusStore(bus)
        self.credentials = credentials or CredentialSource(
            settings.runtime, settings.pull_secret_namespace
        )
        self.puller = Puller(
            runtime,
            max_concurrent=settings.runtime.max_concurrent_pulls,
            timeout=settings.runtime.pull_timeout,
            disk_budget_percent=settings.runtime.disk_budget_percent,
            permits=node_permits(bus, settings.runtime, node),
        )
        # Permanent failures by image: the entry, the reason, its pull secrets' version.
        self._failed: dict[str, tuple[SliceImage, str, str]] = {}
        self._failed_lock = threading.Lock()

    def pull(self, reference: str, *, digest: str | None = None, attempt: int = 1) -> PullResult:
        """Make one image present and report the result (a pull task); never raises for a bad
        image. Its pull secrets (and its digest, unless given) are read from this node's
        catalog slice, never from a task message: only the watcher names Secrets a node reads."""

        def entry_of(image: ImageRef) -> SliceImage:
            entry = self._slice_entry(image)
            return replace(entry, digest=digest or entry.digest)

        entry, result = self._attempt(reference, attempt, entry_of)
        return self._done(entry, result, Trigger.TASK)

    def pull_entry(self, entry: SliceImage, *, attempt: int = 1) -> PullResult:
        """:meth:`pull`, for a catalog entry already at hand (its pull secrets and digest)."""
        normalized, result = self._attempt(entry.image, attempt, _normalized(entry))
        return self._done(normalized, result, Trigger.TASK)

    def rewarm(
        self,
        revision: int,
        images: list[str],
        *,
        trigger: Trigger = Trigger.REWARM,
        retry_failed: bool = False,
        unlisted: list[str] | None = None,
        check_only: bool = False,
    ) -> RewarmReport:
        """Diff this node's catalog slice against the runtime; pull only what is missing.

        ``images`` narrows the re-warm to those references and retries their permanent
        failures too; a periodic re-warm (no ``images``) leaves those alone unless
        ``retry_failed``. ``unlisted`` images are not in the catalog and are pulled once anyway
        (``rewarm --force``). ``check_only`` pulls nothing: it records what the runtime holds,
        so the status reads as of now (``warm-status --refresh``). The worker's own reconcile
        (:mod:`worker.reconcile`) is this same diff, with its ``trigger``.
        """
        started = time.perf_counter()
        node_slice, current = self.catalog.get_slice(self.node)
        # Once, and indexed by every name: ListImages ignores filters, and a scan per wanted
        # image would make a large catalog's re-warm quadratic.
        held = _index_by_name(self.runtime.list_images())
        report = RewarmReport(node=self.node, revision=max(revision, current), trigger=trigger)
        missing, present, stale = [], [], []
        listed = {item.image for item in node_slice.images}
        extra = [SliceImage(image) for image in unlisted or () if image not in listed]
        for entry in [*node_slice.images, *extra]:  # all: the status answers the whole slice
            found = _held_as(entry, held)
            if found is not None and entry.image in listed:
                present.append(entry.image)
            if images and entry.image in listed and entry.image not in images:
                continue
            reason = None if images or retry_failed else self._failed_before(entry)
            if found is not None:
                if self._follows_tag(entry) and not check_only:
                    stale.append((entry, found))
                else:
                    report.present += 1
            elif reason is not None:
                report.failed[entry.image] = reason
            else:
                missing.append(entry)
        expected = [item.image for item in node_slice.images]
        pulling = [] if check_only else [entry.image for entry in missing]
        self.status.record_rewarm(
            self.node, expected, current, present, node_slice.slice, pulling=pulling
        )
        if check_only:  # the record now names what the runtime lacks: nothing more to do
            missing, stale = [], []
        workers = max(1, self.settings.runtime.max_concurrent_pulls)
        with ThreadPoolExecutor(workers, thread_name_prefix="rewarm") as pool:
            pulls = [pool.submit(self._pull_for_rewarm, entry, trigger) for entry in missing]
            pulls += [
                pool.submit(self._pull_for_rewarm, entry, trigger, found) for entry, found in stale
            ]
            results = [pull.result() for pull in pulls]
        for result in results:
            _count(report, result)
        self._record_status(results)  # before the report, so a reader of it sees them
        metrics.IMAGES_EXPECTED.set(len(expected))
        if not images:
            metrics.IMAGES_PRESENT.set(report.present + report.pulled)
        report.seconds = round(time.perf_counter() - started, 4)
        self._publish(rewarm_events_subject(self.node), _report_json(report))
        return report

    def report(self, result: PullResult, *, record_status: bool = True) -> None:
        """Publish ``result`` and record it in the node's status; best effort when NATS is down.

        A re-warm records its results in the status all at once (``record_status=False``).
        """
        log.info(
            "%s %s on %s in %.2fs %s",
            result.outcome,
            result.image,
            result.node,
            result.seconds,
            result.reason,
        )
        metrics.observe(result)
        self._publish(pull_events_subject(self.node), result.to_json())
        if record_status:
            self._record_status([result])

    def _record_status(self, results: list[PullResult]) -> None:
        try:
            self.status.record_many(self.node, results)
        except BusUnavailable as error:
            log.warning("status of %d image(s) not recorded: %s", len(results), error)

    def _pull_for_rewarm(
        self, entry: SliceImage, trigger: Trigger, held: RuntimeImage | None = None
    ) -> PullResult:
        """Pull a missing image, or (``held``) a present tag again to follow a move. The
        re-warm listed the runtime's images already, and records the status of all at once."""
        entry, result = self._attempt(entry.image, 1, _normalized(entry), known_absent=True)
        if held is not None:
            result = _as_refresh(result, held)
        return self._done(entry, result, trigger, record_status=False)

    def _attempt(
        self,
        reference: str,
        attempt: int,
        entry_of: Callable[[ImageRef], SliceImage],
        *,
        known_absent: bool = False,
    ) -> tuple[SliceImage, PullResult]:
        """One attempt at ``reference``: its catalog entry and the result, failures included."""
        started = time.perf_counter()
        entry = SliceImage(reference)
        try:
            image = parse_image(reference)
            entry = entry_of(image)
            credentials = partial(self.credentials.for_image, image, entry.pull_secrets)
            if known_absent:
                done = self.puller.pull(image, digest=entry.digest, credentials=credentials)
            else:
                done = self.puller.ensure(image, digest=entry.digest, credentials=credentials)
        except Exception as error:  # whatever goes wrong costs this image, never the worker
            outcome, reason = _failure(reference, error)
            return entry, self._result(reference, outcome, reason, started, attempt)
        result = PullResult(
            node=self.node,
            image=str(image),
            outcome=done.outcome,
            seconds=round(done.seconds, 4),
            size=done.size,
            image_id=done.image_id,
            attempt=attempt,
        )
        return entry, result

    def _done(
        self,
        entry: SliceImage,
        result: PullResult,
        trigger: Trigger,
        *,
        record_status: bool = True,
    ) -> PullResult:
        result = replace(result, trigger=trigger, digest=entry.digest)
        self._remember(entry, result)
        self.report(result, record_status=record_status)
        return result

    def _follows_tag(self, entry: SliceImage) -> bool:
        """Whether a re-warm pulls this present image again, in case its tag moved."""
        policy = self.settings.runtime.refresh_tags
        if policy == "none" or entry.digest:  # a known digest already tells a moved tag
            return False
        try:
            image = _parsed(entry.image)
        except InvalidImageReference:
            return False
        return not image.digest and (policy == "all" or image.tag == "latest")

    def _slice_entry(self, image: ImageRef) -> SliceImage:
        """This image's entry in the node's catalog slice; a bare entry if it has none.
        Raises :class:`HeldBack` when a wave holds it back from this node."""
        reference = str(image)
        try:
            node_slice, _ = self.catalog.get_slice(self.node)
        except (UnknownNode, BusUnavailable) as error:
            log.info("no catalog entry for %s (%s): pulling without pull secrets", image, error)
            return SliceImage(reference)
        if reference in node_slice.held:
            raise HeldBack(f"held back until a canary node holds it ({reference} is in a wave)")
        found = (item for item in node_slice.images if item.image == reference)
        return next(found, SliceImage(reference))

    def _remember(self, entry: SliceImage, result: PullResult) -> None:
        if result.outcome is Outcome.FAILED:
            version = self.credentials.version(entry.pull_secrets)
            with self._failed_lock:
                self._failed[entry.image] = (entry, result.reason, version)
        elif result.outcome in (Outcome.PULLED, Outcome.PRESENT):
            with self._failed_lock:
                self._failed.pop(entry.image, None)

    def _failed_before(self, entry: SliceImage) -> str | None:
        """The reason ``entry`` failed for good, if it did under this very catalog entry and
        the same content of its pull secrets (a fixed password is worth another try). A digest
        the leader learned since, where the entry had none, is no change: it names what the tag
        pointed at when the pull failed, as the watcher's first digest sends no pull either."""
        with self._failed_lock:
            found = self._failed.get(entry.image)
        if found is None or replace(found[0], digest=found[0].digest or entry.digest) != entry:
            return None
        if found[2] != self.credentials.version(entry.pull_secrets):
            return None
        return (
            "not retried until its catalog entry changes or "
            f"`celery -A tasks rewarm --retry-failed`: {found[1]}"
        )

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


def _failure(reference: str, error: Exception) -> tuple[Outcome, str]:
    """What a failed attempt is: retried later (transient), recorded (permanent) or skipped."""
    if isinstance(error, InvalidImageReference):
        return Outcome.FAILED, error.rule
    if isinstance(error, DiskBudgetExceeded | HeldBack):
        return Outcome.SKIPPED, str(error)
    if isinstance(error, PullFailed):
        transient = error.kind is FailureKind.TRANSIENT
        return (Outcome.RETRYING if transient else Outcome.FAILED), error.reason
    if isinstance(error, RuntimeUnavailable):
        return Outcome.RETRYING, str(error)
    log.exception("pull of %s failed unexpectedly", reference)  # a bug: retried, bounded
    return Outcome.RETRYING, f"internal error: {error!r}"


def _normalized(entry: SliceImage) -> Callable[[ImageRef], SliceImage]:
    """The catalog entry under the image's normalized name, as failures are remembered."""
    return lambda image: replace(entry, image=str(image))


def _index_by_name(images: list[RuntimeImage]) -> dict[str, RuntimeImage]:
    return {name: image for image in images for name in (*image.repo_tags, *image.repo_digests)}


def _held_as(entry: SliceImage, held: dict[str, RuntimeImage]) -> RuntimeImage | None:
    try:
        image = _parsed(entry.image)
    except InvalidImageReference:
        return None
    candidate = held.get(f"{image.name}@{image.digest}" if image.digest else str(image))
    return candidate if is_present(image, candidate, entry.digest) else None


def _as_refresh(result: PullResult, held: RuntimeImage) -> PullResult:
    """A present tag pulled again: pulled if it moved; otherwise, even if the registry failed,
    the image is still warm, so it is neither a failure nor worth a retry."""
    if result.outcome is Outcome.PULLED and result.image_id != held.id:
        return replace(result, reason="the tag moved")
    if result.outcome in (Outcome.PULLED, Outcome.PRESENT):
        return replace(result, outcome=Outcome.PRESENT, reason="tag unchanged")
    return replace(result, outcome=Outcome.PRESENT, reason=f"tag not refreshed: {result.reason}")


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


# The attribute of the Celery app that holds the worker's agent (see worker.steps).
_APP_ATTRIBUTE = "warm_node_agent"


def attach_agent(app: Any, agent: NodeAgent | None) -> None:
    """Make ``agent`` the one the tasks of ``app`` use in this worker (None: detach it)."""
    setattr(app, _APP_ATTRIBUTE, agent)


def agent_of(app: Any) -> NodeAgent:
    """The agent of the worker running ``app``'s tasks; a task reaches it as ``self.app``."""
    agent = getattr(app, _APP_ATTRIBUTE, None)
    if not isinstance(agent, NodeAgent):
        raise RuntimeError("the node agent is not started (run the worker with python -m worker)")
    return agent
