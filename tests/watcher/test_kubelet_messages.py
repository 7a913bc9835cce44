"""The kubelet's Pulled messages, as several Kubernetes versions word them, and its Events as
core/v1 and events.k8s.io/v1 serve them."""

from __future__ import annotations

import pytest

from watcher.kubelet_messages import Pull, go_duration, parse_message, read_event

# (message as the kubelet of that version writes it, what it says)
MESSAGES = [
    # 1.0 to 1.32: a hit
    ('Container image "nginx:1.25" already present on machine', Pull("nginx:1.25", True)),
    # 1.33+: a hit, after the check that the pod may use the image
    (
        'Container image "busybox:1.36" already present on machine and can be accessed by the pod',
        Pull("busybox:1.36", True),
    ),
    # before 1.20: a miss, no duration
    ('Successfully pulled image "redis:7"', Pull("redis:7", False, 0.0, None)),
    # 1.20 to 1.24: the pull's duration, unrounded
    (
        'Successfully pulled image "k8s.gcr.io/pause:3.2" in 3.215870163s',
        Pull("k8s.gcr.io/pause:3.2", False, 3.215870163, 3.215870163),
    ),
    # 1.25 to 1.29: and what the pod waited, queued behind other pulls
    (
        'Successfully pulled image "nginx" in 1m2.5s (1m3.25s including waiting)',
        Pull("nginx", False, 63.25, 62.5),
    ),
    # 1.30+: and the image size; durations in milliseconds below a second
    (
        'Successfully pulled image "ghcr.io/org/app:latest" in 312ms (890ms including waiting).'
        " Image size: 64753325 bytes.",
        Pull("ghcr.io/org/app:latest", False, 0.89, 0.312),
    ),
    # the event correlator's aggregate of similar events
    (
        '(combined from similar events): Successfully pulled image "a/b:1" in 1.5s'
        " (2.25s including waiting). Image size: 1024 bytes.",
        Pull("a/b:1", False, 2.25, 1.5),
    ),
    # kubectl describe (1.33+) shows the field path in front
    (
        'spec.containers{web}: Container image "nginx:1.28.0-alpine" already present on machine',
        Pull("nginx:1.28.0-alpine", True),
    ),
]


@pytest.mark.parametrize(("message", "expected"), MESSAGES)
def test_every_version_wording_is_read(message: str, expected: Pull) -> None:
    found = parse_message(message)

    assert found is not None
    assert found.image == expected.image and found.hit == expected.hit
    assert found.waited == pytest.approx(expected.waited)
    assert found.pulled == pytest.approx(expected.pulled)


@pytest.mark.parametrize(
    "message",
    [
        'Pulling image "nginx"',
        'Failed to pull image "nginx": rpc error',
        'Container image "nginx" is not present with pull policy of Never',
        "",
    ],
)
def test_other_messages_are_no_decision(message: str) -> None:
    assert parse_message(message) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h2m3.5s", 3723.5), ("512ms", 0.512), ("0s", 0.0), ("1.5µs", 1.5e-6), ("2m", 120.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "1x", "s", "1s garbage"])
def test_what_is_no_go_duration(text: str) -> None:
    assert go_duration(text) is None


def test_a_core_v1_event_names_its_node_count_and_times() -> None:
    event = read_event(
        {
            "metadata": {"uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "reason": "Pulled",
            "message": 'Container image "nginx" already present on machine',
            "source": {"component": "kubelet", "host": "node-1"},
            "count": 3,
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T00:10:00Z",
        }
    )

    assert event is not None
    assert (event.uid, event.node, event.occurrences) == ("u-1", "node-1", 3)
    assert event.last is not None and event.first is not None
    assert event.last - event.first == 600


def test_an_events_v1_event_reads_the_note_instance_and_series() -> None:
    event = read_event(
        {
            "apiVersion": "events.k8s.io/v1",
            "metadata": {"uid": "u-2"},
            "reason": "Pulled",
            "note": 'Successfully pulled image "x" in 1s (2s including waiting)',
            "reportingController": "kubelet",
            "reportingInstance": "node-2",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "series": {"count": 4, "lastObservedTime": "2026-01-01T00:05:00.000000Z"},
        }
    )

    assert event is not None
    assert (event.node, event.occurrences, event.pull.waited) == ("node-2", 4, 2.0)
    assert event.last is not None and event.first is not None
    assert event.last - event.first == 300


def test_an_event_of_another_reason_or_without_node_is_not_read() -> None:
    pulled = {"reason": "Pulled", "message": 'Container image "x" already present on machine'}

    assert read_event({**pulled, "reason": "Pulling"}) is None
    assert read_event(pulled) is None  # no source host, no reporting instance
    assert read_event({**pulled, "deprecatedSource": {"host": "n"}}) is not None
