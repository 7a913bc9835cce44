"""1,000 generated image references through parsing, the watcher and a real worker process.

Every reference is impossible on the test registry (none is pushed there), so each must end
FAILED with the reason it is impossible: a parse rule, or the registry's own "not found". A
RETRYING outcome would mean the worker misread a permanent failure as a passing one. Noise that
happens to be a valid reference on another registry (``j`` is ``docker.io/library/j:latest``) is
left out: its failure on this offline machine is a network one, rightly retried. The pulls go as
Celery tasks to ``python -m worker`` on its default settings, so "no crash" is observed: the same
worker process (its pid) is alive and consuming after the last reference.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import HARNESS_SETTINGS
from drills import Drill
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localcluster import Containerd, Registry, product
from localcluster.harness import Events, Worker
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.images import InvalidImageReference, parse_image
from tasks.models import Outcome
from tasks.names import PULL_IMAGE, pull_events_subject
from tasks.settings import NatsSettings, load_settings
from watcher.catalog import CatalogState
from watcher.reflector import Changed
from watcher.workloads import Summarizer

BATCHES, PER_BATCH = 20, 50  # 1,000 references through the watcher and the worker
SETTLE_TIMEOUT = 300.0
COMPONENT = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?", fullmatch=True)
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)
NOISE = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def references(registry_host: str) -> st.SearchStrategy[str]:
    """Well-formed references on the test registry (never the internet), broken ones, noise."""
    name = st.lists(COMPONENT, min_size=1, max_size=3).map("/".join)
    valid = st.builds(lambda n, t: f"{registry_host}/{n}:{t}", name, TAG)
    digest = st.builds(
        lambda n, h: f"{registry_host}/{n}@sha256:{h}",
        name,
        st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    )
    broken = st.builds(_break, valid, st.integers(0, 5))
    offline = NOISE.filter(lambda noise: _registry(noise) in (None, registry_host))
    return st.one_of(valid, digest, broken, offline)


def _break(reference: str, how: int) -> str:
    return [
        reference.upper(),
        reference + ":",
        reference.replace("/", "//", 1),
        reference + "@sha256:abc",
        " " + reference,
        reference.replace(":", ":-", 1),
    ][how]


@pytest.fixture
def worker(
    workdir: Path, registry: Registry, redis_server: RedisServer, nats_server: NatsServer
) -> Iterator[Worker]:
    tag = uuid.uuid4().hex[:4]
    base = workdir / f"g{tag}"
    with Containerd(base, "node", insecure_registries=[registry.host]) as node:
        env = product.product_env(
            broker_url=f"{redis_server.url}/3",
            nats_url=nats_server.url,
            kubeconfig=None,
            **HARNESS_SETTINGS,
        )
        process = product.worker(f"gen-{tag}", node.endpoint, env, base / "logs")
        running = Worker(process, f"gen-{tag}", f"{redis_server.url}/3").start()
        yield running
        running.stop()


def test_generated_references_never_crash_and_fail_clearly(
    drill: Drill, registry: Registry, nats_server: NatsServer, worker: Worker
) -> None:
    """1,000 generated image references: each ends FAILED with its reason, the worker lives."""
    generated: list[str] = []
    rules: Counter[str] = Counter()

    @settings(max_examples=BATCHES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(references(registry.host), min_size=PER_BATCH, max_size=PER_BATCH))
    def through_the_watcher(batch: list[str]) -> None:
        _parse(batch, rules)
        _watch(batch)
        generated.extend(batch)

    through_the_watcher()
    assert len(generated) == BATCHES * PER_BATCH
    pid = worker.process.pid
    with NatsBus(NatsSettings(url=nats_server.url)) as bus:
        events = Events.follow(bus, pull_events_subject(worker.node))
        for reference in generated:
            worker.send(PULL_IMAGE, image=reference)
        events.wait_for(lambda: len(events.received) >= len(generated), SETTLE_TIMEOUT,
                        f"a result for each of {len(generated)} pull tasks")  # fmt: skip
    reported = {e.image for e in events.received}
    missing = [r for r in generated if _reported_as(r) not in reported]
    assert not missing, f"no result for {missing[:20]}"
    assert worker.process.alive() and worker.process.pid == pid, (
        f"the worker process {pid} did not survive the references:\n{worker.process.log_tail()}"
    )
    not_failed = [f"{e.image!r}: {e.outcome} {e.reason}" for e in events.received
                  if e.outcome is not Outcome.FAILED]  # fmt: skip
    assert not not_failed, "impossible images not FAILED:\n" + "\n".join(not_failed[:20])
    vague = [e.image for e in events.received if not e.reason or "internal error" in e.reason]
    assert not vague, f"failed without a specific reason: {vague[:20]}"
    outcomes = Counter(_why(e.image) for e in events.received)
    drill.record("references generated", len(generated))
    drill.record("pull results python -m worker published", len(events.received))
    drill.record("worker pid before and after", f"{pid}, {worker.process.pid} (alive)")
    drill.record("FAILED, by reason", dict(outcomes.most_common()))
    drill.record("parse errors by rule (top 5)", dict(rules.most_common(5)))


def _registry(reference: str) -> str | None:
    """The registry ``reference`` names, None if it does not parse."""
    try:
        return parse_image(reference).registry
    except InvalidImageReference:
        return None


def _reported_as(reference: str) -> str:
    """The image name a pull result carries: the normalized reference, or the raw one."""
    try:
        return str(parse_image(reference))
    except InvalidImageReference:
        return reference


def _why(image: str) -> str:
    return "a parse rule" if _registry(image) is None else "the registry's answer"


def _parse(batch: list[str], rules: Counter[str]) -> None:
    for reference in batch:
        try:
            parse_image(reference)
        except InvalidImageReference as error:
            assert error.reference == reference and error.rule
            rules[error.rule.split(":")[0][:50]] += 1


def _watch(batch: list[str]) -> None:
    """One Deployment holding every reference: the valid ones enter the catalog, the rest are
    reported one by one, and none blocks another."""
    obj: dict[str, Any] = {
        "metadata": {"name": "generated", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": f"c{i}", "image": r} for i, r in enumerate(batch)]}
            }
        },
    }
    watch = load_settings({}).watch
    summary = Summarizer(watch).workload("Deployment", obj)
    assert summary is not None
    state = CatalogState(watch)
    state.apply([Changed("Deployment", "default/generated", summary)])
    valid = {r for r in batch if _valid(r)}
    assert len(summary.images) == len({str(parse_image(r)) for r in valid})
    assert len(summary.invalid) == len([r for r in batch if r and not _valid(r)])


def _valid(reference: str) -> bool:
    try:
        parse_image(reference)
    except InvalidImageReference:
        return False
    return True
