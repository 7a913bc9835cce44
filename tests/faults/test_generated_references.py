"""1,000 generated image references through parsing, the watcher and the worker."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drills import Drill
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localcluster import Containerd, Registry
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.images import InvalidImageReference, parse_image
from tasks.models import Outcome
from tasks.settings import load_settings
from watcher.catalog import CatalogState
from watcher.reflector import Changed
from watcher.workloads import Summarizer
from worker.agent import NodeAgent
from worker.runtime.cri import CriRuntime

BATCHES, PER_BATCH = 20, 50  # 1,000 references through the watcher and the worker
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
    return st.one_of(valid, digest, broken, NOISE)


def _break(reference: str, how: int) -> str:
    return [
        reference.upper(),
        reference + ":",
        reference.replace("/", "//", 1),
        reference + "@sha256:abc",
        " " + reference,
        reference.replace(":", ":-", 1),
    ][how]


@pytest.fixture(scope="module")
def agent(workdir: Path, registry: Registry, nats_server: NatsServer) -> Iterator[NodeAgent]:
    tag = uuid.uuid4().hex[:4]
    with Containerd(workdir / f"g{tag}", "node", insecure_registries=[registry.host]) as node:
        settings = load_settings(
            {"WARM_NATS_URL": nats_server.url, "WARM_DISK_BUDGET_PERCENT": "99"}
        )
        runtime = CriRuntime(node.endpoint)
        with NatsBus(settings.nats) as bus:
            yield NodeAgent(settings, f"gen-{tag}", runtime, bus)
        runtime.close()


def test_generated_references_never_crash_and_fail_clearly(
    drill: Drill, registry: Registry, agent: NodeAgent
) -> None:
    """1,000 generated image references: parsed, watched and pulled without a crash."""
    outcomes: Counter[str] = Counter()
    rules: Counter[str] = Counter()

    @settings(max_examples=BATCHES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(references(registry.host), min_size=PER_BATCH, max_size=PER_BATCH))
    def through_everything(batch: list[str]) -> None:
        _parse(batch, rules)
        _watch(batch)
        for reference in batch:
            result = agent.pull(reference)  # must never raise, whatever the reference
            outcomes[result.outcome.value] += 1
            assert result.outcome is not Outcome.PULLED  # none of them exists in the registry
            assert result.reason, f"{reference!r} failed without a reason"

    through_everything()
    assert sum(outcomes.values()) == BATCHES * PER_BATCH
    drill.record("references generated", BATCHES * PER_BATCH)
    drill.record("worker outcomes", dict(outcomes))
    drill.record("parse errors by rule (top 5)", dict(rules.most_common(5)))


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
