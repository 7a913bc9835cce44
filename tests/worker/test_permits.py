"""The cluster-wide cap per registry against a real nats-server: never more than K holders
from several processes and threads, a SIGKILLed holder's permit back within its lease, a wait
that holds no node slot and ends, a permit given back taken at once by a waiter (and, its
notice missed, at the waiter's next try), and NATS unreachable not stopping a pull."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.harness import wait_for
from localcluster.ports import free_port
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.settings import NatsSettings
from worker.permits import (
    BUCKET,
    LEASE,
    LONGEST_PAUSE,
    RegistryLimits,
    RegistryPermits,
    freed_subject,
    permit_prefix,
)
from worker.runtime import FailureKind, PullFailed

REPO = Path(__file__).resolve().parents[2]
HOLDER = Path(__file__).with_name("permit_holder.py")


def holder(nats: NatsServer, mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HOLDER), mode, "--nats", nats.url, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture
def monitored_nats(workdir: Path) -> Iterator[NatsServer]:
    with NatsServer(workdir / f"nats-m-{uuid.uuid4().hex[:6]}", monitor=True) as server:
        yield server


def messages_in(server: NatsServer) -> dict[int, int]:
    """Messages the server received from each client connection, by connection id."""
    with urllib.request.urlopen(f"{server.monitor_url}/connz", timeout=5) as response:
        return {c["cid"]: c["in_msgs"] for c in json.load(response).get("connections") or []}


class Waiter(threading.Thread):
    """One node's pull waiting for a permit of ``registry``, on a NATS connection of its own;
    ``done`` is when it got the permit (or failed)."""

    def __init__(self, nats: NatsServer, registry: str, max_wait: float) -> None:
        super().__init__()
        self.bus = NatsBus(NatsSettings(url=nats.url))
        self.name = f"waiter-{uuid.uuid4().hex[:6]}"
        self.permits = RegistryPermits(self.bus, RegistryLimits(1), self.name, max_wait=max_wait)
        self.registry = registry
        self.key: str | None = None
        self.done = 0.0

    def run(self) -> None:
        try:
            self.key = self.permits.acquire(self.registry, threading.Semaphore(1)).key
        finally:
            self.done = time.monotonic()


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow  # several processes racing for permits
def test_k_permits_at_most_under_many_acquirers_from_several_processes(
    private_nats: NatsServer,
    private_bus: NatsBus,
    tmp_path: Path,
    stop_all: list[subprocess.Popen[str]],
) -> None:
    limit, registry = 3, "registry.example:5000"
    prefix = permit_prefix(registry)
    inside = tmp_path / "inside"
    inside.mkdir()
    args = ["--registry", registry, "--limit", str(limit), "--dir", str(inside)]
    stop_all += [
        holder(private_nats, "churn", *args, "--threads", "4", "--rounds", "3") for _ in range(3)
    ]
    keys_seen, inside_seen = 0, 0
    while any(process.poll() is None for process in stop_all):
        keys_seen = max(keys_seen, len(private_bus.kv_subjects(BUCKET, prefix)))
        inside_seen = max(inside_seen, len(list(inside.iterdir())))
        # A hold lasts 0.2 s: a look every 10 ms sees it, and leaves the holders a core and
        # their NATS server, which looking without a pause took (1,500 requests a second).
        time.sleep(0.01)
    assert [process.returncode for process in stop_all] == [0, 0, 0]
    # 12 acquirers, 36 holds of 0.2 s: the cap is reached and never passed.
    assert keys_seen == limit
    assert inside_seen == limit
    assert private_bus.kv_subjects(BUCKET, prefix) == []  # every permit given back


@pytest.mark.slow  # a lease and a half
def test_a_sigkilled_holders_permit_comes_back_within_its_lease(
    private_nats: NatsServer, private_bus: NatsBus, stop_all: list[subprocess.Popen[str]]
) -> None:
    registry = "ghcr.io"
    process = holder(private_nats, "hold", "--registry", registry, "--limit", "1")
    stop_all.append(process)
    assert process.stdout is not None
    key = process.stdout.readline().strip()
    assert key == f"{permit_prefix(registry)}0"
    time.sleep(LEASE + 3)  # renewed while it lives: still held past its first lease
    assert private_bus.kv_subjects(BUCKET, permit_prefix(registry)) == [key]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    while private_bus.kv_subjects(BUCKET, permit_prefix(registry)):
        assert time.monotonic() - killed < LEASE + 2, "the dead holder's permit did not expire"
        time.sleep(0.2)
    permits = RegistryPermits(private_bus, RegistryLimits(1), "next", max_wait=5)
    assert permits.acquire(registry, threading.Semaphore(1)).key == key


def test_a_waiting_pull_holds_no_node_slot_and_its_wait_ends(private_bus: NatsBus) -> None:
    limits = RegistryLimits(100, {"busy.example": 1})
    other = RegistryPermits(private_bus, limits, "other-node", max_wait=5)
    held = other.acquire("busy.example", threading.Semaphore(1))
    slots = threading.Semaphore(1)
    permits = RegistryPermits(private_bus, limits, "this-node", max_wait=3)
    failure: list[PullFailed] = []

    def wait() -> None:
        with pytest.raises(PullFailed) as raised:
            permits.acquire("busy.example", slots)
        failure.append(raised.value)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1)
    # While it waits, the node's one slot serves a pull from another registry.
    uncapped = permits.acquire("docker.io", slots)
    assert uncapped.key is not None and uncapped.key.startswith(permit_prefix("docker.io"))
    slots.release()
    uncapped.release()
    waiter.join()
    assert failure[0].kind is FailureKind.TRANSIENT
    assert "registry busy.example busy: none of its 1 pull permits" in str(failure[0])
    held.release()
    assert permits.acquire("busy.example", slots).key == f"{permit_prefix('busy.example')}0"


def test_a_permit_given_back_goes_to_a_waiter_at_once_not_at_its_next_try(
    monitored_nats: NatsServer,
) -> None:
    """The waiter has waited long enough for its pauses between tries to be 2 s or more; the
    permit is given back just after one of its tries (seen at the server: its connection's
    messages), so trying after pauses alone would take it no sooner than 2 s later."""
    registry = "busy.example"
    holders = NatsBus(NatsSettings(url=monitored_nats.url))
    held = RegistryPermits(holders, RegistryLimits(1), "holder", max_wait=5).acquire(
        registry, threading.Semaphore(1)
    )
    before = set(messages_in(monitored_nats))
    waiter = Waiter(monitored_nats, registry, max_wait=60)
    waiter.start()
    wait_for(lambda: len(set(messages_in(monitored_nats)) - before) == 1, 10, "its connection")
    (cid,) = set(messages_in(monitored_nats)) - before
    time.sleep(4)  # past 0.5 + 1 + 2 s: its pauses are now 2 to 5 s long
    tried = messages_in(monitored_nats)[cid]
    wait_for(lambda: messages_in(monitored_nats)[cid] > tried, 10, "its next try")
    time.sleep(0.2)  # the try's last request answered
    released = time.monotonic()
    held.release()
    waiter.join(timeout=10)
    holders.close()
    waiter.bus.close()
    assert waiter.key == f"{permit_prefix(registry)}0"
    print(f"\nwaiter took the permit {waiter.done - released:.3f}s after its release")
    assert waiter.done - released < 1.0  # polling alone: 2 s at the least


def test_a_waiter_takes_a_permit_freed_without_notice_at_its_next_try(
    private_nats: NatsServer, private_bus: NatsBus
) -> None:
    """A notice can be missed (a dead holder's lease expires without one): the waiter still
    tries after each pause, so the permit is taken within the longest pause, not the wait."""
    registry = "quiet.example"
    other = RegistryPermits(private_bus, RegistryLimits(1), "other", max_wait=5)
    other.acquire(registry, threading.Semaphore(1))
    waiter = Waiter(private_nats, registry, max_wait=60)
    waiter.start()
    time.sleep(2)
    key = f"{permit_prefix(registry)}0"
    entry = private_bus.kv_get(BUCKET, key)
    assert entry is not None
    freed = time.monotonic()
    private_bus.kv_purge(BUCKET, key, up_to_revision=entry[1])  # gone, and no notice said so
    waiter.join(timeout=60)
    waiter.bus.close()
    assert waiter.key == key
    assert waiter.done - freed < LONGEST_PAUSE + 2


def test_a_waiter_passes_on_the_notice_it_did_not_use(
    private_nats: NatsServer, private_bus: NatsBus
) -> None:
    """Two permits given back while one waiter listens: it takes one and, leaving, passes the
    other's notice on to whoever waits next, rather than let it go unheard."""
    registry = "two.example"
    heard: list[str] = []
    private_bus.subscribe(freed_subject(registry), lambda _s, data: heard.append(data.decode()))
    other = RegistryPermits(private_bus, RegistryLimits(2), "other", max_wait=5)
    held = [other.acquire(registry, threading.Semaphore(2)) for _ in range(2)]
    waiter = RegistryPermits(private_bus, RegistryLimits(2), "waiter", max_wait=30)
    slot = threading.Semaphore(1)
    taken: list[str | None] = []
    thread = threading.Thread(target=lambda: taken.append(waiter.acquire(registry, slot).key))
    thread.start()
    time.sleep(4)  # it waits, both permits held, in pauses of 2 s or more
    slot.acquire()  # its node's one slot is busy: woken, it waits for it
    for permit in held:
        permit.release()
    wait_for(lambda: len(heard) == 2, 5, "both notices")
    slot.release()
    thread.join(timeout=10)
    notices = [json.loads(data)["key"] for data in heard]
    wait_for(lambda: len(heard) == 3, 5, "the unused notice passed on")
    assert taken[0] in notices
    assert json.loads(heard[2])["key"] == next(key for key in notices if key != taken[0])


def test_nats_unreachable_lets_pulls_go_uncapped_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = NatsBus(NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=1))
    permits = RegistryPermits(bus, RegistryLimits(1), "lonely", max_wait=600)
    slots = threading.Semaphore(2)
    with caplog.at_level(logging.WARNING, logger="worker.permits"):
        started = time.monotonic()
        first = permits.acquire("docker.io", slots)
        then = time.monotonic()
        second = permits.acquire("docker.io", slots)
        done = time.monotonic()
    assert (first.key, second.key) == (None, None)  # both pulls go ahead, uncapped
    assert then - started < 10  # two connection attempts and a short pause
    assert done - then < 0.5  # the next pulls do not ask the unreachable NATS again
    assert [r.getMessage()[:40] for r in caplog.records if r.name == "worker.permits"] == [
        "pulls go uncapped until NATS is back: ca"
    ]
    bus.close()


class RetakingBus(NatsBus):
    """The bus of a worker one of whose permits expired (NATS was away longer than a lease)
    and whose pull took that same key again just as its renewer went to renew the old one."""

    retake: RegistryPermits | None = None

    def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int:
        permits, self.retake = self.retake, None
        if permits is not None:
            self.kv_purge(bucket, key, up_to_revision=revision)  # the lease ran out
            assert permits.acquire("quay.io", threading.Semaphore(1)).key == key
        return super().kv_update(bucket, key, value, revision)


def test_a_permit_taken_again_while_its_expired_lease_was_renewed_stays_renewed(
    private_nats: NatsServer, private_bus: NatsBus
) -> None:
    with RetakingBus(NatsSettings(url=private_nats.url)) as bus:
        permits = RegistryPermits(bus, RegistryLimits(1), "retaker", max_wait=5)
        key = permits.acquire("quay.io", threading.Semaphore(1)).key
        bus.retake = permits
        permits.renew()  # the old lease's renewal fails; the new holding must survive it
        assert bus.retake is None, "the renewal never ran"

        taken_again = private_bus.kv_get(BUCKET, str(key))
        permits.renew()
        renewed = private_bus.kv_get(BUCKET, str(key))
        assert taken_again is not None and renewed is not None
        assert renewed[1] > taken_again[1], "the permit taken again is no longer renewed"
