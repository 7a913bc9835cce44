"""The sync NATS facade against a real nats-server: one connection however many threads race to
open it, a forked child that publishes, asynchronous errors in the log and the metric, the
compare-and-set operations the beat lease is built on, and a bucket NATS lost coming back."""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from localcluster.harness import wait_for
from localcluster.services import NatsServer
from tasks.bus import BusUnavailable, ErrorLog, NatsBus, RevisionMismatch
from tasks.settings import NatsSettings

LIMITED = """
authorization {
  users = [
    {user: "app", password: "app-pw"},
    {user: "limited", password: "limited-pw", permissions: {publish: {deny: ["forbidden.>"]}}}
  ]
}
"""


@pytest.fixture
def monitored_nats(workdir: Path) -> Iterator[NatsServer]:
    with NatsServer(workdir / f"nats-m-{uuid.uuid4().hex[:6]}", monitor=True) as server:
        yield server


def connections(server: NatsServer) -> list[dict[str, object]]:
    """The clients connected to ``server``, as the server itself reports them."""
    with urllib.request.urlopen(f"{server.monitor_url}/connz", timeout=5) as response:
        return list(json.load(response).get("connections") or [])


def errors_counted(kind: str) -> float:
    return REGISTRY.get_sample_value("warm_nats_errors_total", {"kind": kind}) or 0.0


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasks.bus" and text in r.message]


def test_32_threads_making_their_first_call_at_once_open_one_connection(
    monitored_nats: NatsServer,
) -> None:
    bus = NatsBus(NatsSettings(url=monitored_nats.url))
    start = threading.Barrier(32)
    failures: list[BaseException] = []

    def first_call() -> None:
        start.wait()
        try:
            bus.kv_get("warm-race", "key")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=first_call) for _ in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures
        clients = [c for c in connections(monitored_nats) if c.get("name") == "warm-images"]
        assert len(clients) == 1, f"{len(clients)} connections opened by one bus"
    finally:
        bus.close()
    wait_for(lambda: not connections(monitored_nats), 10, "the connection to close")


def test_a_forked_child_publishes_and_the_parent_receives(private_nats: NatsServer) -> None:
    received = threading.Event()
    with NatsBus(NatsSettings(url=private_nats.url)) as bus:
        bus.subscribe("warm.test.fork", lambda _subject, data: received.set())
        pid = os.fork()
        if pid == 0:  # the child: the parent's loop thread does not exist here
            code = 1
            try:
                bus.publish("warm.test.fork", b"from the child")
                bus.flush()
                bus.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked child could not publish"
        assert received.wait(10), "the parent did not receive the child's message"
        bus.publish("warm.test.fork", b"the parent still can")  # its own session untouched
        bus.flush()


def test_a_permission_violation_reaches_the_log_and_the_metric(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = errors_counted("permission")
    caplog.set_level(logging.WARNING, logger="tasks.bus")
    config = workdir / f"nats-limited-{uuid.uuid4().hex[:6]}.conf"
    config.write_text(LIMITED)
    with (
        NatsServer(workdir / f"nats-p-{uuid.uuid4().hex[:6]}", config=config) as server,
        NatsBus(NatsSettings(url=server.url, user="limited", password="limited-pw")) as bus,
    ):
        for _ in range(5):
            bus.publish("forbidden.subject", b"denied")
        bus.flush()
        wait_for(lambda: errors_counted("permission") == before + 5, 10, "5 errors counted")
    lines = logged(caplog, "permission error")
    assert len(lines) == 1, lines  # rate-limited: one line for five violations
    assert "forbidden.subject" in lines[0] and server.url in lines[0]


def test_an_exception_in_a_subscription_callback_reaches_the_log_and_the_metric(
    bus: NatsBus, caplog: pytest.LogCaptureFixture
) -> None:
    before = errors_counted("callback")
    caplog.set_level(logging.WARNING, logger="tasks.bus")

    def broken(_subject: str, _data: bytes) -> None:
        raise ValueError("callback broke on purpose")

    subject = f"warm.test.broken.{uuid.uuid4().hex[:6]}"
    bus.subscribe(subject, broken)
    bus.publish(subject, b"x")
    bus.flush()
    wait_for(lambda: errors_counted("callback") == before + 1, 10, "the callback error counted")
    assert logged(caplog, "callback broke on purpose")


def test_errors_of_one_kind_are_logged_once_per_interval_with_the_count_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    errors = ErrorLog("nats://example:4222", interval=30, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="tasks.bus")
    for second in (0, 1, 2, 29):
        now[0] = second
        errors.report("connection", ConnectionRefusedError("refused"))
    errors.report("slow_consumer", RuntimeError("slow"))  # another kind is not held back
    now[0] = 31
    errors.report("connection", ConnectionRefusedError("refused"))
    lines = logged(caplog, "error")
    assert len(lines) == 3, lines
    assert lines[2].endswith("refused (3 more not logged in 30s)")


def test_conditional_writes_name_the_revision_they_expect(bus: NatsBus) -> None:
    bucket, key = "warm-test-cas", f"k-{uuid.uuid4().hex[:6]}"
    first = bus.kv_create(bucket, key, b"a")
    with pytest.raises(RevisionMismatch):
        bus.kv_create(bucket, key, b"b")  # it exists
    second = bus.kv_update(bucket, key, b"b", first)
    with pytest.raises(RevisionMismatch):
        bus.kv_update(bucket, key, b"c", first)  # stale: somebody wrote after it
    with pytest.raises(RevisionMismatch):
        bus.kv_delete(bucket, key, last_revision=first)
    assert bus.kv_get(bucket, key) == (b"b", second)
    bus.kv_delete(bucket, key, last_revision=second)
    assert bus.kv_get(bucket, key) is None
    bus.kv_create(bucket, key, b"again")  # a deleted key may be created again


def test_purge_leaves_no_marker_and_keeps_a_later_write(bus: NatsBus) -> None:
    bucket = f"warm-test-purge-{uuid.uuid4().hex[:6]}"
    mine = bus.kv_create(bucket, "slots.a.0", b"mine")
    bus.kv_create(bucket, "slots.a.1", b"other")
    bus.kv_create(bucket, "slots.b.0", b"elsewhere")
    assert bus.kv_subjects(bucket, "slots.a.") == ["slots.a.0", "slots.a.1"]
    bus.kv_purge(bucket, "slots.a.0", up_to_revision=mine)
    assert bus.kv_subjects(bucket, "slots.a.") == ["slots.a.1"]  # no delete marker left
    theirs = bus.kv_create(bucket, "slots.a.0", b"theirs")
    bus.kv_purge(bucket, "slots.a.0", up_to_revision=mine)  # a stale purge
    assert bus.kv_get(bucket, "slots.a.0") == (b"theirs", theirs)


def test_a_bucket_ttl_expires_entries_on_the_server(bus: NatsBus) -> None:
    bucket = f"warm-test-ttl-{uuid.uuid4().hex[:6]}"
    bus.set_bucket_ttl(bucket, 1)
    bus.kv_create(bucket, "lease", b"x")
    wait_for(lambda: bus.kv_get(bucket, "lease") is None, 10, "the entry to expire")
    bus.kv_create(bucket, "lease", b"y")  # expired, so free to take


def test_a_ttl_shorter_than_two_minutes_applies_to_a_bucket_made_without_one(
    nats_server: NatsServer,
) -> None:
    """The server refuses a max age below the bucket's duplicates window (two minutes unless
    the bucket was made with a TTL): the window shrinks with it."""
    bucket = f"warm-test-later-ttl-{uuid.uuid4().hex[:6]}"
    with NatsBus(NatsSettings(url=nats_server.url)) as first:
        first.kv_put(bucket, "made", b"without a ttl")
    with NatsBus(NatsSettings(url=nats_server.url)) as later:
        later.set_bucket_ttl(bucket, 1)
        later.kv_create(bucket, "lease", b"x")
        wait_for(lambda: later.kv_get(bucket, "lease") is None, 10, "the entry to expire")


def test_a_bucket_nats_lost_with_its_storage_is_created_again(private_nats: NatsServer) -> None:
    with NatsBus(NatsSettings(url=private_nats.url)) as bus:
        for index in range(3):
            bus.kv_put("warm-test-lost", f"k{index}", b"x")
        before = bus.kv_state("warm-test-lost")
        private_nats.restart_empty()

        def writable() -> bool:
            try:
                return bus.kv_put("warm-test-lost", "k0", b"y") == 1
            except Exception:
                return False

        wait_for(writable, 20, "a write to the bucket once NATS is back")
        after = bus.kv_state("warm-test-lost")
    assert before.revision == 3 and after.revision == 1
    assert after.created != before.created


def test_close_then_use_again_opens_a_new_session(private_nats: NatsServer) -> None:
    bus = NatsBus(NatsSettings(url=private_nats.url))
    bus.kv_put("warm-test-close", "k", b"1")
    bus.close()
    bus.close()  # twice is harmless
    assert bus.kv_get("warm-test-close", "k") == (b"1", 1)
    bus.close()


def test_closing_while_other_threads_use_the_bus_leaves_no_connection_behind(
    monitored_nats: NatsServer,
) -> None:
    bus = NatsBus(NatsSettings(url=monitored_nats.url))
    stop = threading.Event()
    calls = [0]
    unexpected: list[BaseException] = []

    def use() -> None:
        while not stop.is_set():
            try:
                bus.kv_get("warm-test-closing", "key")
            except BusUnavailable:
                pass  # a call cut short by close() says so
            except BaseException as error:
                unexpected.append(error)
            calls[0] += 1

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(5):  # each close() while the threads are busy with the bus
        busy = calls[0] + 16
        wait_for(lambda: calls[0] >= busy, 30, "the threads to use the bus")  # noqa: B023
        bus.close()
    stop.set()
    for thread in threads:
        thread.join(30)
    bus.close()
    assert not unexpected, unexpected
    wait_for(lambda: not connections(monitored_nats), 10, "every connection to close")
