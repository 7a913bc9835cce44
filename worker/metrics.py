"""Prometheus metrics of the node worker, served on ``WARM_METRICS_PORT`` (0: not served).

Labels stay small on purpose: no image label (a catalog of thousands of images times thousands
of nodes would explode the series count); which image failed is in the node's status and in the
NATS events. The node is the scrape target's own label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tasks.models import Outcome, PullResult

PULLS = Counter("warm_pulls", "Pull attempts by outcome", ["outcome"])
PULL_SECONDS = Histogram(
    "warm_pull_duration_seconds",
    "Time to make an image present, by outcome (present images excluded)",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
IMAGES_PRESENT = Gauge("warm_images_present", "Images of this node's catalog slice it holds")
IMAGES_EXPECTED = Gauge("warm_images_expected", "Images in this node's catalog slice")
DISK_BUDGET_SKIPS = Counter("warm_disk_budget_skips", "Pulls skipped for the disk budget")
# The cluster-wide cap per registry (worker.permits); a fleet's sum of PERMITS_HELD for a
# registry never exceeds its limit.
PERMITS_HELD = Gauge(
    "warm_registry_permits_held", "Pull permits this worker holds, by registry", ["registry"]
)
PERMIT_WAITS = Counter(
    "warm_registry_permit_waits",
    "Pulls that found every permit of their registry taken",
    ["registry"],
)
PERMIT_WAIT_SECONDS = Histogram(
    "warm_registry_permit_wait_seconds",
    "Time a pull waited for a permit of its registry (pulls that waited)",
    ["registry"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

_TIMED = (Outcome.PULLED, Outcome.FAILED, Outcome.RETRYING)


def observe(result: PullResult) -> None:
    PULLS.labels(result.outcome.value).inc()
    if result.outcome in _TIMED:
        PULL_SECONDS.labels(result.outcome.value).observe(result.seconds)
    if result.outcome is Outcome.SKIPPED:
        DISK_BUDGET_SKIPS.inc()
