"""The kubelet's ``Pulled`` Events, in the wording of several Kubernetes versions and both Event
APIs, written to and read back from the API double over HTTP, then counted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster import FakeKubeAPI
from watcher.kubelet_events import Decision, WarmHits, decision_of, go_duration, pulled_event

NGINX = "docker.io/library/nginx:1.25"
# (kubelet version, message, decision)
MESSAGES = [
    (
        "1.24",
        'Container image "nginx:1.25" already present on machine',
        Decision("nginx:1.25", True),
    ),
    (
        "1.33",
        'Container image "nginx:1.25" already present on machine and can be accessed by the pod',
        Decision("nginx:1.25", True),
    ),
    (
        "1.24",
        'Successfully pulled image "nginx:1.25" in 2.500314159s',
        Decision("nginx:1.25", False, 2.500314159),
    ),
    (
        "1.27",
        'Successfully pulled image "nginx:1.25" in 1.2s (1m3.5s including waiting)',
        Decision("nginx:1.25", False, 63.5),
    ),
    (
        "1.30",
        'Successfully pulled image "ghcr.io/acme/app@sha256:'
        + "a" * 64
        + '" in 850ms (850ms including waiting). Image size: 70123456 bytes.',
        Decision("ghcr.io/acme/app@sha256:" + "a" * 64, False, 0.85),
    ),
]


@pytest.mark.parametrize(("version", "message", "expected"), MESSAGES)
def test_each_kubelet_wording_is_read(version: str, message: str, expected: Decision) -> None:
    assert decision_of(message) == expected, version


def test_other_messages_and_durations_are_not_decisions() -> None:
    assert decision_of('Pulling image "nginx:1.25"') is None
    assert decision_of('Successfully pulled image "x" in soon') is None
    assert go_duration("1h2m3.5s") == 3723.5
    assert go_duration("3.2µs") == pytest.approx(3.2e-6)
    for text in ("", "5", "1x", "s", "1s2"):
        with pytest.raises(ValueError):
            go_duration(text)


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


def core_event(name: str, node: str, message: str, reason: str = "Pulled") -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": node},
        "type": "Normal",
        "count": 1,
    }


def events_v1(name: str, node: str, note: str) -> Any:
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web-1", "namespace": "default"},
        "reason": "Pulled",
        "note": note,
        "action": "Pulling",
        "reportingController": "kubelet",
        "reportingInstance": node,
        "type": "Normal",
    }


def test_events_of_both_apis_are_counted_per_image_class_and_node(kube: FakeKubeAPI) -> None:
    api = kube.api_client()
    core, events = client.CoreV1Api(api), client.EventsV1Api(api)
    hit, miss = MESSAGES[0][1], MESSAGES[3][1]
    core.create_namespaced_event("default", core_event("a", "n1", hit))
    core.create_namespaced_event("default", core_event("b", "n2", miss))
    core.create_namespaced_event("default", core_event("c", "n1", "Started", reason="Started"))
    core.create_namespaced_event(
        "default", core_event("d", "n1", 'Container image "busybox" already present on machine')
    )
    events.create_namespaced_event("default", events_v1("e", "n1", hit))
    answers: list[Any] = [
        core.list_namespaced_event("default", _preload_content=False),
        events.list_namespaced_event("default", _preload_content=False),
    ]
    raw = [obj for answer in answers for obj in json.loads(answer.data)["items"]]
    counts = WarmHits(lambda image: image == NGINX, {"n1": "pool-a", "n2": "pool-b"}.__getitem__)
    for obj in raw:
        found = pulled_event(obj)
        if found is not None:
            counts.count(*found)

    assert {key: t.to_json() for key, t in counts.by_image.items()} == {
        (NGINX, "pool-a"): {"hits": 2, "misses": 0, "seconds_waited": 0.0},
        (NGINX, "pool-b"): {"hits": 0, "misses": 1, "seconds_waited": 63.5},
    }
    assert {node: t.to_json() for node, t in counts.by_node.items()} == {
        "n1": {"hits": 2, "misses": 0, "seconds_waited": 0.0},
        "n2": {"hits": 0, "misses": 1, "seconds_waited": 63.5},
    }
    # Not in the catalog: counted apart, so they show what the selection misses.
    assert {image: t.hits for image, t in counts.outside.items()} == {
        "docker.io/library/busybox:latest": 1
    }
    assert counts.by_node["n1"].ratio == 1.0


def test_counting_keeps_up_and_holds_counts_not_events() -> None:
    """100,000 Events over 50 images and 1,000 nodes leave 1,000 node tallies, counted at well
    over 5,000 Events a second on one core (a quick run; no benchmark yet)."""
    counts = WarmHits(lambda image: True, lambda node: node[:6])
    messages = [MESSAGES[i % 2 * 3][1].replace("nginx", f"app{i % 50}") for i in range(100)]
    started = time.perf_counter()
    for i in range(100_000):
        event = core_event("x", f"node-{i % 1000}", messages[i % 100])
        found = pulled_event(event)
        assert found is not None
        counts.count(*found)
    rate = 100_000 / (time.perf_counter() - started)
    print(f"\nPulled events counted: {rate:,.0f}/s")
    assert rate > 5_000
    assert len(counts.by_node) == 1000
    assert sum(t.hits + t.misses for t in counts.by_node.values()) == 100_000
