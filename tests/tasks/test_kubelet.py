"""The kubelet counts' records in NATS: compact, complete, and what warm-status shows of them."""

from __future__ import annotations

import json

from tasks.kubelet import KubeletCounts, KubeletSummary


def test_a_summary_survives_its_json_whole() -> None:
    summary = KubeletSummary(
        images={"docker.io/library/nginx:1.25": KubeletCounts(5, 2, 3.25, 7.5)},
        classes={"pool-a": KubeletCounts(5, 2, 3.25, 7.5)},
        not_in_catalog={"docker.io/x/y:1": KubeletCounts(0, 1, 0.5)},
        pull_seconds={"docker.io/library/nginx:1.25": 1.5},
        watermark=1_800_000_000.123456,
    )

    again = KubeletSummary.from_json(summary.to_json())

    assert again == summary  # the watermark to the microsecond: it compares with Event times
    assert len(summary.to_json()) < 400  # counts as arrays, not objects


def test_the_report_ranks_images_by_time_lost_and_gives_the_ratio() -> None:
    summary = KubeletSummary(
        images={
            "a": KubeletCounts(hits=8, misses=1, seconds_waited=2.0),
            "b": KubeletCounts(hits=0, misses=3, seconds_waited=30.0),
            "c": KubeletCounts(hits=4),  # never cold: not among the losses
        }
    )

    report = summary.report()

    assert (report["hits"], report["misses"], report["ratio"]) == (12, 4, 0.75)
    assert [item["image"] for item in report["top_lost"]] == ["b", "a"]
    assert report["seconds_waited"] == 32.0
    assert json.loads(json.dumps(report)) == report


def test_a_node_record_is_the_three_numbers_warm_status_shows() -> None:
    counts = KubeletCounts(hits=3, misses=1, seconds_waited=1.23456, seconds_saved=9.0)

    assert json.loads(counts.to_json()) == {"hits": 3, "misses": 1, "seconds_waited": 1.235}
    assert KubeletCounts.from_json(counts.to_json()).hits == 3
    assert KubeletCounts().ratio is None
