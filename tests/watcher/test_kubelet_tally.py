"""Counting the kubelet's Pulled Events: counts not events, each occurrence once."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tasks.kubelet import OTHER, KubeletSummary
from watcher import kubelet_tally
from watcher.kubelet_tally import DEDUPE_WINDOW, KubeletTally, PullTimes

NGINX = "docker.io/library/nginx:1.25"
NOW = 1_800_000_000.0


def iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def pulled(uid: str, message: str, node: str = "node-1", count: int = 1, at: float = NOW) -> Any:
    return {
        "metadata": {"uid": uid, "namespace": "default", "name": uid},
        "reason": "Pulled",
        "message": message,
        "source": {"component": "kubelet", "host": node},
        "count": count,
        "firstTimestamp": iso(at),
        "lastTimestamp": iso(at),
    }


HIT = 'Container image "nginx:1.25" already present on machine'
MISS = 'Successfully pulled image "nginx:1.25" in 2s (3.5s including waiting)'


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def in_catalog(image: str) -> bool:
    return image == NGINX


def tally_of(
    clock: Clock, restored: KubeletSummary | None = None, pull_times: PullTimes | None = None
) -> KubeletTally:
    times = pull_times or PullTimes(in_catalog)
    return KubeletTally(in_catalog, lambda node: "pool-a", times, restored=restored, clock=clock)


def test_hits_and_misses_are_counted_per_image_class_and_node(clock: Clock) -> None:
    tally = tally_of(clock)

    tally.observe(pulled("a", HIT))
    tally.observe(pulled("b", MISS, node="node-2"))

    image = tally.summary.images[NGINX]
    assert (image.hits, image.misses, image.seconds_waited) == (1, 1, 3.5)
    assert tally.summary.classes["pool-a"].hits == 1
    assert tally.nodes["node-1"].hits == 1 and tally.nodes["node-2"].misses == 1


def test_a_relisted_or_updated_event_counts_only_new_occurrences(clock: Clock) -> None:
    tally = tally_of(clock)

    tally.observe(pulled("a", HIT))
    tally.observe(pulled("a", HIT))  # re-listed
    tally.observe(pulled("a", HIT, count=3))  # the correlator saw it twice more

    assert tally.summary.images[NGINX].hits == 3


def test_a_hit_saves_the_workers_pull_time_else_the_kubelets(clock: Clock) -> None:
    times = PullTimes(in_catalog)
    tally = tally_of(clock, pull_times=times)

    tally.observe(pulled("m", MISS))  # the kubelet pulled it in 2 s
    tally.observe(pulled("a", HIT))
    times.reported(NGINX, 4.0)  # then a worker measured 4 s
    tally.observe(pulled("b", HIT, count=2))
    times.reported("docker.io/library/other:1", 9.0)  # not in the catalog: no estimate

    assert tally.summary.images[NGINX].seconds_saved == pytest.approx(2.0 + 2 * 4.0)
    restored = KubeletSummary.from_json(tally.snapshot()[0])
    assert restored.pull_seconds == {NGINX: 4.0}  # for the next leader


def test_images_not_in_the_catalog_are_counted_apart_and_bounded(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubelet_tally, "MAX_UNCATALOGED", 2)
    tally = tally_of(clock)

    for i in range(4):
        tally.observe(pulled(f"u{i}", f'Successfully pulled image "other/img{i}" in 1s'))

    apart = tally.summary.not_in_catalog
    assert set(apart) == {"docker.io/other/img0:latest", "docker.io/other/img1:latest", OTHER}
    assert apart[OTHER].misses == 2 and NGINX not in tally.summary.images


def test_a_new_leader_does_not_count_again_what_its_predecessor_published(clock: Clock) -> None:
    first = tally_of(clock)
    first.observe(pulled("a", HIT, at=NOW - 60))
    first.observe(pulled("b", HIT, at=NOW - 30, count=2))
    restored = KubeletSummary.from_json(first.snapshot()[0])

    clock.now += 10
    second = tally_of(clock, restored)
    second.observe(pulled("a", HIT, at=NOW - 60))  # the API still holds them: listed again
    second.observe(pulled("b", HIT, at=NOW - 30, count=2))
    second.observe(pulled("c", HIT, at=NOW + 5))  # after the last write: new

    assert second.summary.images[NGINX].hits == 4


def test_memory_holds_uids_for_one_to_two_windows(clock: Clock) -> None:
    tally = tally_of(clock)
    tally.observe(pulled("a", HIT))

    clock.now += 2.5 * DEDUPE_WINDOW
    tally.observe(pulled("z", HIT, at=clock.now))  # rotates the generations
    clock.now += 1
    tally.observe(pulled("y", HIT, at=clock.now))
    tally.observe(pulled("a", HIT))  # forgotten, but last seen long before: counted already

    assert tally.summary.images[NGINX].hits == 3
    assert len(tally._seen) <= 3


def test_the_count_table_keeps_every_tag_as_it_grows() -> None:
    table = kubelet_tally._CountTable(size=4)
    tags = [kubelet_tally._tag(f"uid-{i}") for i in range(5000)]

    for i, tag in enumerate(tags):
        table.put(tag, i % 7 + 1)
    table.put(tags[0], 70_000)  # past 16 bits: held at the most it can say

    assert len(table) == 5000
    assert [table.get(tag) for tag in tags[1:]] == [i % 7 + 1 for i in range(1, 5000)]
    assert table.get(tags[0]) == kubelet_tally.COUNT_MASK
    assert table.get(kubelet_tally._tag("never seen")) is None
