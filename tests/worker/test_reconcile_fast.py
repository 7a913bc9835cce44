"""The reconcile step on the in-memory runtime: at once on start, after a delay on reconnect,
never two at a time. The step is driven as Celery's consumer drives it (start per connection);
the process-level behaviour is in test_reconcile.py and the fault drills."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from test_agent_fast import APP, LATEST, put_slice
from worker_testing import worker_settings

from localcluster.harness import Events
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.models import Trigger
from worker import handlers, reconcile
from worker.agent import NodeAgent, attach_agent
from worker.runtime.fake import FakeRuntime


@pytest.fixture
def consumer(
    nats_server: NatsServer, bus: NatsBus, node_name: str, runtime: FakeRuntime
) -> Iterator[SimpleNamespace]:
    """What the step reads from Celery's consumer: the app, with the worker's agent on it."""
    settings = worker_settings(nats_server.url, "fake")
    attach_agent(handlers.app, NodeAgent(settings, node_name, runtime, bus))
    yield SimpleNamespace(app=handlers.app)
    attach_agent(handlers.app, None)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


def test_a_start_reconciles_at_once_and_a_reconnect_after_a_short_delay(
    consumer: SimpleNamespace,
    runtime: FakeRuntime,
    bus: NatsBus,
    events: Events,
    node_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "RECONNECT_JITTER", 0.2)
    runtime.registry.push(APP)
    runtime.registry.push(LATEST)
    put_slice(bus, node_name, APP)
    step = reconcile.Reconcile(consumer)

    step.start(consumer)  # the worker consumes
    events.wait_for(lambda: bool(events.of(APP)), 5, "the reconcile at start")
    put_slice(bus, node_name, APP, LATEST)
    step.start(consumer)  # the broker connection came back
    events.wait_for(lambda: bool(events.of(LATEST)), 5, "the reconcile on reconnect")
    step.shutdown(consumer)

    assert [e.trigger for e in events.of(APP)] == [Trigger.START]
    assert [e.trigger for e in events.of(LATEST)] == [Trigger.RECONNECT]
    assert runtime.pulls == [APP, LATEST]  # APP, present by then, was not pulled again


def test_a_reconnect_while_a_reconcile_runs_leaves_it_to_that_one(
    consumer: SimpleNamespace,
    runtime: FakeRuntime,
    bus: NatsBus,
    events: Events,
    node_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "RECONNECT_JITTER", 0.0)
    release = threading.Event()
    runtime.on_pull = lambda _ref: release.wait(5)
    runtime.registry.push(APP)
    put_slice(bus, node_name, APP)
    step = reconcile.Reconcile(consumer)

    step.start(consumer)
    runtime.wait_for(lambda: runtime.active == 1, "the reconcile's pull")
    step.start(consumer)  # finds the first one running
    release.set()
    events.wait_for(lambda: bool(events.of(APP)), 5, "the pull")
    step.shutdown(consumer)

    assert runtime.pulls == [APP]
    assert [e.trigger for e in events.of(APP)] == [Trigger.START]
