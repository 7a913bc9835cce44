"""The watcher's Prometheus metrics (served on WARM_METRICS_PORT).

Module-level, as prometheus_client expects: one registry per process, shared by every
:class:`watcher.service.Watcher` a test may start in it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
# The kubelet's own Pulled Events (watcher/kubelet_tally.py): images of the catalog by image
# (bounded: past the bound, image="(other)") and by node class; images not in the catalog apart.
# Not by image and class both: a scrape of 2,000 images times 50 classes would be megabytes.
KUBELET_EVENTS = Counter(
    "warm_watcher_kubelet_events",
    "Pulled Events read (outcome: counted, repeat: an occurrence counted already, ignored: "
    "not an image decision the tally can read)",
    ["outcome"],
)
KUBELET_PULLS = Counter(
    "warm_watcher_kubelet_pulls",
    "Image decisions the kubelet reported for images of the catalog (result: hit, miss)",
    ["image", "result"],
)
KUBELET_WAIT_SECONDS = Counter(
    "warm_watcher_kubelet_wait_seconds",
    "Seconds pods waited on cold pulls of images of the catalog, as the kubelet said",
    ["image"],
)
KUBELET_SAVED_SECONDS = Counter(
    "warm_watcher_kubelet_saved_seconds",
    "Estimated seconds warm images spared pods: each hit counts the image's measured pull time",
    ["image"],
)
KUBELET_CLASS_PULLS = Counter(
    "warm_watcher_kubelet_class_pulls",
    "Image decisions for images of the catalog by node class (its pool label; result: hit, miss)",
    ["node_class", "result"],
)
KUBELET_CLASS_WAIT_SECONDS = Counter(
    "warm_watcher_kubelet_class_wait_seconds",
    "Seconds pods waited on cold pulls of images of the catalog, by node class",
    ["node_class"],
)
KUBELET_CLASS_SAVED_SECONDS = Counter(
    "warm_watcher_kubelet_class_saved_seconds",
    "Estimated seconds warm images spared pods, by node class",
    ["node_class"],
)
KUBELET_UNCATALOGED_PULLS = Counter(
    "warm_watcher_kubelet_uncataloged_pulls",
    "Image decisions the kubelet reported for images not in the catalog (result: hit, miss)",
    ["result"],
)
KUBELET_UNCATALOGED_WAIT_SECONDS = Counter(
    "warm_watcher_kubelet_uncataloged_wait_seconds",
    "Seconds pods waited on cold pulls of images not in the catalog",
)
