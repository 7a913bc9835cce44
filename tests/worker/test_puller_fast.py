"""The puller's own logic on the in-memory runtime: milliseconds, no containerd.

Single-flight, the concurrency bound, the disk budget checked inside the slot, credentials
tried in order, and moved tags. Pulls are held open with events, never with sleeps, so what
overlaps is decided by the test, not by the scheduler. tests/worker/test_pulls.py checks the
same behaviour on a real containerd.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.images import parse_image
from tasks.models import Outcome
from worker.puller import DiskBudgetExceeded, PullDone, Puller
from worker.runtime import Credentials, FailureKind, PullFailed, RuntimeUnavailable
from worker.runtime.fake import MIB, FakeRuntime

WAIT = 5.0  # seconds; only reached when the behaviour under test is broken


class Gate:
    """Holds every pull open until released, and counts the pulls that entered."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, _reference: str) -> None:
        self.entered.release()
        assert self.release.wait(WAIT), "the test never released the pulls"

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=WAIT), f"fewer than {count} pulls started"


def make(
    runtime: FakeRuntime, *, max_concurrent: int = 2, disk_budget_percent: float | None = None
) -> Puller:
    return Puller(
        runtime,
        max_concurrent=max_concurrent,
        timeout=10.0,
        disk_budget_percent=disk_budget_percent,
    )


def test_a_present_image_costs_one_status_call_and_no_pull() -> None:
    runtime = FakeRuntime()
    runtime.registry.push("example.com/app:v1")
    puller = make(runtime)
    first = puller.ensure(parse_image("example.com/app:v1"))

    second = puller.ensure(parse_image("example.com/app:v1"))

    assert (first.outcome, second.outcome) == (Outcome.PULLED, Outcome.PRESENT)
    assert runtime.pulls == ["example.com/app:v1"]
    assert second.size == MIB


def test_simultaneous_requests_for_one_image_become_one_pull() -> None:
    gate = Gate()
    runtime = FakeRuntime(on_pull=gate)
    runtime.registry.push("example.com/app:v1")
    puller = make(runtime)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(puller.ensure, parse_image("example.com/app:v1")) for _ in range(5)]
        gate.wait_entered(1)
        runtime.wait_for(lambda: runtime.calls["image_status"] == 5, "every caller to look")
        gate.release.set()
        results: list[PullDone] = [future.result(WAIT) for future in futures]

    assert runtime.pulls == ["example.com/app:v1"]
    assert {result.outcome for result in results} == {Outcome.PULLED}
    assert len({result.image_id for result in results}) == 1


def test_a_failed_pull_fails_every_caller_that_joined_it() -> None:
    gate = Gate()
    runtime = FakeRuntime(on_pull=gate)
    runtime.registry.fail("example.com/app:v1", FailureKind.TRANSIENT, "503 unavailable")
    puller = make(runtime)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(puller.ensure, parse_image("example.com/app:v1")) for _ in range(3)]
        gate.wait_entered(1)
        runtime.wait_for(lambda: runtime.calls["image_status"] == 3, "every caller to look")
        gate.release.set()
        errors = [future.exception(WAIT) for future in futures]

    assert len(runtime.pulls) == 1
    assert all(isinstance(error, PullFailed) and "503" in error.reason for error in errors)


def test_no_more_than_the_bound_pull_at_once() -> None:
    gate = Gate()
    runtime = FakeRuntime(on_pull=gate)
    images = [f"example.com/app-{n}:v1" for n in range(6)]
    for image in images:
        runtime.registry.push(image)
    puller = make(runtime, max_concurrent=2)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(puller.ensure, parse_image(image)) for image in images]
        gate.wait_entered(2)
        runtime.wait_for(lambda: runtime.calls["image_status"] == 6, "every request")
        assert not gate.entered.acquire(timeout=0.1), "a third pull started beside two"
        gate.release.set()
        for future in futures:
            future.result(WAIT)

    assert runtime.max_active == 2
    assert sorted(runtime.pulls) == images


def test_the_disk_budget_stops_a_pull_before_the_runtime_is_asked() -> None:
    runtime = FakeRuntime()
    runtime.registry.push("example.com/app:v1")
    runtime.fill_disk(95)
    puller = make(runtime, disk_budget_percent=90.0)

    with pytest.raises(DiskBudgetExceeded, match=r"95\.0% full, budget 90%"):
        puller.ensure(parse_image("example.com/app:v1"))

    assert runtime.pulls == []


def test_the_disk_budget_counts_the_pulls_that_ran_while_waiting_for_a_slot() -> None:
    runtime = FakeRuntime(capacity_bytes=100 * MIB)
    runtime.registry.push("example.com/big:v1", size=60 * MIB)
    runtime.registry.push("example.com/next:v1", size=MIB)
    puller = make(runtime, max_concurrent=1, disk_budget_percent=50.0)

    puller.ensure(parse_image("example.com/big:v1"))  # 60% full after this one
    with pytest.raises(DiskBudgetExceeded):
        puller.ensure(parse_image("example.com/next:v1"))


def test_credentials_are_tried_in_order_until_one_is_accepted() -> None:
    runtime = FakeRuntime()
    runtime.registry.push("private.example/team/app:v1")
    good, stale = Credentials("robot", "right"), Credentials("robot", "old")
    runtime.registry.require("private.example/team/app", good)
    puller = make(runtime)

    done = puller.ensure(
        parse_image("private.example/team/app:v1"), credentials=lambda: [stale, good]
    )

    assert done.outcome is Outcome.PULLED
    assert runtime.credentials_seen == [stale, good]


def test_a_transient_failure_stops_the_credential_candidates() -> None:
    runtime = FakeRuntime()
    runtime.registry.push("private.example/app:v1")
    runtime.registry.fail("private.example/app:v1", FailureKind.TRANSIENT, "connection reset")
    puller = make(runtime)
    first, second = Credentials("a", "1"), Credentials("b", "2")

    with pytest.raises(PullFailed) as failed:
        puller.ensure(parse_image("private.example/app:v1"), credentials=lambda: [first, second])

    assert failed.value.kind is FailureKind.TRANSIENT
    assert runtime.credentials_seen == [first]


def test_a_tag_held_under_an_older_digest_is_pulled_again() -> None:
    runtime = FakeRuntime()
    old = runtime.registry.push("example.com/app:stable")
    puller = make(runtime)
    puller.ensure(parse_image("example.com/app:stable"), digest=old)
    new = runtime.registry.push("example.com/app:stable")  # the tag moves

    moved = puller.ensure(parse_image("example.com/app:stable"), digest=new)
    again = puller.ensure(parse_image("example.com/app:stable"), digest=new)

    assert (moved.outcome, again.outcome) == (Outcome.PULLED, Outcome.PRESENT)
    held = runtime.image_status("example.com/app:stable")
    assert held is not None and held.known_as(f"example.com/app@{new}")


def test_a_runtime_that_is_down_raises_for_the_caller_to_retry() -> None:
    runtime = FakeRuntime()
    runtime.down = True

    with pytest.raises(RuntimeUnavailable):
        make(runtime).ensure(parse_image("example.com/app:v1"))


def test_pull_skips_the_status_check_for_a_caller_that_listed_the_images() -> None:
    runtime = FakeRuntime()
    runtime.registry.push("example.com/app:v1")

    done = make(runtime).pull(parse_image("example.com/app:v1"))

    assert done.outcome is Outcome.PULLED
    assert runtime.calls["image_status"] == 1  # after the pull, for its size; none before
