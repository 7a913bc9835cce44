"""Reconcile on start and on reconnect: a worker that comes back leaves its node warm at once.

On Redis a pull left unacknowledged by a killed worker comes back only after the visibility
timeout (an hour by default), and the next periodic re-warm may be half an hour away; a
DaemonSet rollout, an OOM kill or a node reboot mid-pull must not leave the node cold that long.
So the worker diffs its own slice of the catalog against its runtime as soon as it consumes
(the re-warm's diff: one ListImages, the gaps pulled), and again whenever its broker connection
comes back, since a broker restarted without persistence may have lost queued pulls. A pull
redelivered later finds the image present, or joins the pull already running (the agent's
single-flight): it costs nothing.

The reconcile runs in a thread of its own, so the worker consumes meanwhile. The one at start
is not delayed: a restarted node must be warm in seconds. The one on reconnect waits a random
moment of up to RECONNECT_JITTER seconds, because a broker that comes back reconnects every
node of the fleet at the same instant, and their slice reads would hit NATS together.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from celery import bootsteps

from tasks.bus import BusUnavailable
from tasks.catalog import UnknownNode
from tasks.models import Trigger

from .agent import NodeAgent, agent_of
from .handlers import counts, rewarm

log = logging.getLogger(__name__)

RECONNECT_JITTER = 10.0  # seconds; 5,000 nodes then read their slices at ~500 a second


class Reconcile(bootsteps.StartStopStep):
    """A consumer step: Celery starts it once the worker consumes, and again after each
    reconnection to the broker (the consumer's blueprint restarts on a connection error)."""

    label = "reconcile"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._starts = 0
        self._running = threading.Lock()  # one reconcile at a time
        self._stopping = threading.Event()

    def start(self, consumer: Any) -> None:
        trigger = Trigger.RECONNECT if self._starts else Trigger.START
        self._starts += 1
        delay = random.uniform(0, RECONNECT_JITTER) if trigger is Trigger.RECONNECT else 0.0
        agent = agent_of(consumer.app)
        thread = threading.Thread(
            target=self._run, args=(agent, trigger, delay), name=f"reconcile-{trigger}", daemon=True
        )
        thread.start()

    def shutdown(self, consumer: Any) -> None:
        self._stopping.set()  # a reconcile still waiting out its jitter does not begin

    def _run(self, agent: NodeAgent, trigger: Trigger, delay: float) -> None:
        if self._stopping.wait(delay):
            return
        if not self._running.acquire(blocking=False):
            log.info("reconcile on %s skipped: the one running covers it", trigger)
            return
        try:
            done = rewarm(agent, 0, [], trigger)
        except UnknownNode:
            log.info("reconcile on %s: node %s has no catalog slice yet", trigger, agent.node)
        except BusUnavailable as error:
            log.warning("reconcile on %s left to the next re-warm: %s", trigger, error)
        except Exception:  # a thread's exception is lost unless logged; the worker goes on
            log.exception("reconcile on %s failed", trigger)
        else:
            log.info("reconcile on %s of node %s: %s", trigger, agent.node, counts(done))
        finally:
            self._running.release()
