"""The watcher's Prometheus metrics (served on WARM_METRICS_PORT).

Module-level, as prometheus_client expects: one registry per process, shared by every
:class:`watcher.service.Watcher` a test may start in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tasks.kubelet import KubeletCounts, KubeletSummary

# A copy of the leader's counts, and how many Pulled Events it read by outcome.
KubeletFigures = tuple[KubeletSummary, dict[str, int]]

WATCH_EVENTS = Counter("warm_watcher_events", "Watch events and listed objects received", ["kind"])
RELISTS = Counter(
    "warm_watcher_relists", "Full lists of a kind (start, 410 Gone, resync)", ["kind"]
)
API_ERRORS = Counter("warm_watcher_api_errors", "Failed list or watch calls", ["kind"])
INVALID_IMAGES = Counter(
    "warm_watcher_invalid_images", "Image references skipped because they are malformed"
)
CATALOG_IMAGES = Gauge("warm_watcher_catalog_images", "Images in the catalog")
NODES = Gauge("warm_watcher_nodes", "Nodes known to the watcher")
NODE_CLASSES = Gauge("warm_watcher_node_classes", "Classes of equivalent nodes")
TASKS_SENT = Counter("warm_watcher_tasks_sent", "Celery tasks sent to node queues", ["task"])
SLICE_WRITES = Counter(
    "warm_watcher_slice_writes", "Node slice pointers written to NATS key-value (one per move)"
)
PUBLISH_FAILURES = Counter(
    "warm_watcher_publish_failures", "Flushes that failed because NATS or the broker did"
)
CATALOG_LOSSES = Counter(
    "warm_watcher_catalog_losses", "Times the catalog bucket was found emptied and written again"
)
LEADER = Gauge("warm_watcher_leader", "1 while this replica is the leader that dispatches")
PULL_SECRET_COPIES = Gauge(
    "warm_watcher_pull_secret_copies", "Pull secrets mirrored into the mirror namespace"
)
PULL_SECRETS_SKIPPED = Gauge(
    "warm_watcher_pull_secrets_skipped",
    "Referenced pull secrets not mirrored: missing, unreadable or not a registry type",
)
DIGEST_LOOKUPS = Counter(
    "warm_watcher_digest_lookups",
    "Tag to digest lookups at registries (outcome: resolved, moved, failed; failed keeps the "
    "last known digest)",
    ["outcome"],
)
UNTAINT_SECONDS = Histogram(
    "warm_watcher_node_untaint_seconds",
    "Seconds from a node's creation to the removal of its startup taint, by why it was removed",
    ["reason"],
    buckets=(5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1800, 3600),
)
WAVES = Gauge(
    "warm_watcher_waves",
    "Images on their way to the fleet, by state (canary: waiting for a canary to hold it; "
    "stopped: a canary failed for good, held back from the other nodes)",
    ["state"],
)
WAVE_TRANSITIONS = Counter(
    "warm_watcher_wave_transitions",
    "Waves started, released to every target node, or stopped by a canary's failure",
    ["outcome"],
)
WAVE_CANARY_SECONDS = Histogram(
    "warm_watcher_wave_canary_seconds",
    "Seconds from a wave's start until a canary held the image and the other nodes were sent it",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)


class KubeletCollector(Collector):
    """The kubelet's Pulled Events as counted by the leader (watcher/kubelet_tally.py), read at
    scrape time from its counts: counting an Event updates no metric, at thousands a second.

    Images of the catalog by image (bounded: past the bound, image="(other)") and by node
    class, not by both (2,000 images times 50 classes would make megabyte scrapes); images
    not in the catalog apart. A replica that is not leading counts nothing and shows none.
    """

    def __init__(self) -> None:
        self.source: Callable[[], KubeletFigures | None] = lambda: None

    def collect(self) -> Iterator[Metric]:
        figures = self.source()
        if figures is None:
            return
        summary, events = figures
        prefix = "warm_watcher_kubelet_"
        read = CounterMetricFamily(
            prefix + "events",
            "Pulled Events read (outcome: counted, repeat: an occurrence counted already, "
            "ignored: not an image decision the tally can read)",
            labels=["outcome"],
        )
        for outcome, count in sorted(events.items()):
            read.add_metric([outcome], count)
        yield read
        catalog = "images of the catalog"
        yield from _kubelet_families(prefix, ["image"], summary.images, catalog)
        yield from _kubelet_families(
            prefix + "class_", ["node_class"], summary.classes, catalog + " by node class"
        )
        apart = {"": summary.not_in_catalog_totals}
        yield from _kubelet_families(prefix + "uncataloged_", [], apart, "images not in catalog")


def _kubelet_families(
    prefix: str, labels: list[str], counts: Mapping[str, KubeletCounts], what: str
) -> Iterator[Metric]:
    """pulls, wait_seconds and saved_seconds (counted for images of the catalog only) of
    ``counts``, labelled with their key when ``labels`` names it."""
    pulls = CounterMetricFamily(
        f"{prefix}pulls",
        f"Image decisions the kubelet reported for {what} (result: hit, miss)",
        labels=[*labels, "result"],
    )
    waited = CounterMetricFamily(
        f"{prefix}wait_seconds",
        f"Seconds pods waited on cold pulls of {what}, as the kubelet said",
        labels=labels,
    )
    saved = CounterMetricFamily(
        f"{prefix}saved_seconds",
        f"Estimated seconds warm images spared pods, {what}: each hit at the image's measured "
        "pull time",
        labels=labels,
    )
    for key, count in sorted(counts.items()):
        values = [key] if labels else []
        pulls.add_metric([*values, "hit"], count.hits)
        pulls.add_metric([*values, "miss"], count.misses)
        waited.add_metric(values, count.seconds_waited)
        saved.add_metric(values, count.seconds_saved)
    yield from (pulls, waited, saved) if labels else (pulls, waited)


KUBELET = KubeletCollector()
REGISTRY.register(KUBELET)
