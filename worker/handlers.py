"""The node worker's Celery tasks, registered on the shared app under the names in tasks.names.

A task message never chooses the Secrets a node reads: anyone who can publish on the broker
(every node holds its password; Flower can send tasks) could otherwise make every worker read
any Secret it names. Pull secrets come from the node's catalog slice, which only the watcher
writes; a message that names some is logged and the names ignored.

Transient failures go back to Celery with exponential backoff and full jitter, up to a limit;
permanent failures are recorded and dropped. So a registry that is down costs a bounded number
of retries per image, spread out in time, and a missing tag costs exactly one attempt.

A task reaches the node agent through its app (``self.app``), where the worker's agent step
(:mod:`worker.steps`) put it, so the same task bodies serve any worker that has an agent.

Each task ends in the Celery state that says what happened (Flower shows it): a permanent
failure raises :class:`PullFailedError` (FAILURE, never retried), a transient one retries with
:class:`TransientPullError` as its reason (RETRY), and a re-warm that left images missing raises
:class:`RewarmIncompleteError` (FAILURE) after its report is out. They are declared ``throws``:
expected outcomes, logged in one line rather than with a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from tasks.app import app
from tasks.errors import GAVE_UP, PullFailedError, RewarmIncompleteError, TransientPullError
from tasks.models import Outcome, PullResult, Trigger
from tasks.names import PULL_IMAGE, REWARM_NODE
from tasks.routing import queue_for_node

from .agent import NodeAgent, RewarmReport, agent_of

log = logging.getLogger(__name__)

RETRY_FACTOR = 5  # seconds; doubled each retry, capped by WARM_PULL_RETRY_BACKOFF_MAX


@app.task(name=PULL_IMAGE, bind=True, max_retries=None, throws=(PullFailedError,))
def pull_image(
    self: Task,
    node: str,
    image: str,
    pull_secrets: list[str] | None = None,
    digest: str | None = None,
    **_ignored: Any,
) -> str:
    agent = agent_of(self.app)
    if node != agent.node:
        log.error("pull of %s for node %s reached node %s: dropped", image, node, agent.node)
        return "misrouted"
    if pull_secrets:  # only the catalog, written by the watcher, names Secrets a node reads
        log.warning("pull of %s: secret names in the task message ignored: %s", image, pull_secrets)
    attempt = self.request.retries + 1
    result = agent.pull(image, digest=digest, attempt=attempt)
    if result.outcome is Outcome.RETRYING:
        _retry_or_give_up(self, agent, result, digest)
    if result.outcome is Outcome.FAILED:
        raise PullFailedError(result.reason)
    return result.outcome.value


@app.task(name=REWARM_NODE, bind=True, max_retries=None, throws=(RewarmIncompleteError,))
def rewarm_node(
    self: Task,
    node: str,
    revision: int = 0,
    images: list[str] | None = None,
    *,
    retry_failed: bool = False,
    unlisted: list[str] | None = None,
    check_only: bool = False,
    **_ignored: Any,
) -> dict[str, int]:
    """Options as in :meth:`NodeAgent.rewarm`; a check pulls nothing, so it never fails."""
    agent = agent_of(self.app)
    if node != agent.node:
        log.error("re-warm for node %s reached node %s: dropped", node, agent.node)
        return {}
    options = {"retry_failed": retry_failed, "unlisted": unlisted, "check_only": check_only}
    report = rewarm(agent, revision, images or [], Trigger.REWARM, **options)
    if report.failed and not check_only:
        expected = report.pulled + report.present + len(report.failed) + len(report.retrying)
        raise RewarmIncompleteError.of(report.failed, expected)
    return counts(report)


def rewarm(
    agent: NodeAgent, revision: int, images: list[str], trigger: Trigger, **options: Any
) -> RewarmReport:
    """The node's slice diffed against its runtime and the gaps pulled; what failed for now
    is retried later, each image on its own schedule. A re-warm task and the reconcile;
    ``options`` are those of :meth:`NodeAgent.rewarm`."""
    report = agent.rewarm(revision, images, trigger=trigger, **options)
    for image in report.retrying:
        schedule_retry(agent, image, attempt=1)
    return report


def counts(report: RewarmReport) -> dict[str, int]:
    return {"pulled": report.pulled, "present": report.present, "failed": len(report.failed)}


def schedule_retry(agent: NodeAgent, image: str, *, attempt: int, digest: str | None = None) -> int:
    """A pull task for later, its countdown in seconds; it reads the image's pull secrets from
    the catalog when it runs. Sent from a task, it is that task's child (Flower links them)."""
    countdown = backoff_seconds(attempt, agent.settings.runtime.retry_backoff_max)
    kwargs: dict[str, object] = {"node": agent.node, "image": image}
    if digest:
        kwargs["digest"] = digest
    pull_image.apply_async(
        kwargs=kwargs, queue=queue_for_node(agent.node), countdown=countdown, retries=attempt
    )
    return countdown


def backoff_seconds(retries: int, maximum: int) -> int:
    return int(get_exponential_backoff_interval(RETRY_FACTOR, retries, maximum, full_jitter=True))


def _retry_or_give_up(
    task: Task, agent: NodeAgent, result: PullResult, digest: str | None
) -> NoReturn:
    """Retry later (RETRY), or, past the limit, record the failure and end in FAILURE.

    The next attempt is a new task (a child of this one), not Celery's ``self.retry`` under the
    same id: the worker receives a retry at once and holds it until its countdown, and that
    "received" would replace RETRY in Flower within milliseconds. So this attempt stays RETRY,
    with its reason, and the next one has a row of its own.
    """
    attempt = task.request.retries + 1
    if task.request.retries >= agent.settings.runtime.max_retries:
        reason = f"{GAVE_UP} {attempt} attempts: {result.reason}"
        agent.report(replace(result, outcome=Outcome.FAILED, reason=reason))
        raise PullFailedError(reason)
    countdown = schedule_retry(agent, result.image, attempt=attempt, digest=digest)
    raise Retry(exc=TransientPullError(result.reason), when=countdown)
