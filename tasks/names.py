"""Names shared by every component: Celery task names, NATS subjects and KV buckets.

Tasks are sent by name (``app.send_task``) so the watcher, beat and the CLI never import the
node worker's code; these constants are the whole coupling between them.
"""

from __future__ import annotations

import hashlib

# Celery tasks, executed by the node worker (worker/) on its own queue.
PULL_IMAGE = "warm.pull_image"  # (node, image, digest) -> one image on one node
REWARM_NODE = "warm.rewarm_node"  # (node, revision) -> diff the node's catalog slice, pull gaps
# The beat entry for the periodic re-warm. The scheduler fans it out itself (one rewarm_node per
# node), so no worker ever consumes a message by this name.
REWARM_CATALOG = "warm.rewarm_catalog"

# NATS subjects.
PULL_EVENTS = "warm.events.pull"  # .<node>: one PullResult per finished pull attempt
CATALOG_EVENTS = "warm.events.catalog"  # one CatalogChange per change of the catalog
INVALID_IMAGE_EVENTS = "warm.events.catalog.invalid"  # one per malformed reference in a workload
REWARM_EVENTS = "warm.events.rewarm"  # .<node>: a node started / finished a re-warm
# .<registry token>: a pull permit of that registry was given back (worker/permits.py); pulls
# waiting for one listen in a queue group, so each notice wakes one of them.
PERMITS_FREED = "warm.permits.freed"

# NATS JetStream key-value buckets.
# images.<key> -> CatalogEntry, slices.<hash> -> ClassSlice, nodes.<node> -> SlicePointer
CATALOG_BUCKET = "warm-catalog"
STATUS_BUCKET = "warm-status"  # <node> -> NodeStatus
BEAT_BUCKET = "warm-beat"  # leader -> the beat that may dispatch (expires unless renewed)
# summary -> KubeletSummary, nodes.<node> -> KubeletCounts (the kubelet's own Pulled Events)
KUBELET_BUCKET = "warm-kubelet"
PERMITS_BUCKET = "warm-permits"  # permits.<registry>.<n> -> its holder (worker/permits.py)


def pull_events_subject(node: str) -> str:
    return f"{PULL_EVENTS}.{node}"


def rewarm_events_subject(node: str) -> str:
    return f"{REWARM_EVENTS}.{node}"


# Pull secrets: the watcher copies each Secret that workloads name in imagePullSecrets into the
# mirror namespace (WARM_PULL_SECRET_NAMESPACE) under a name of its own; catalogs and slices
# name only those copies, and the worker reads nothing else (its RBAC reaches only that
# namespace, which holds nothing but the copies).
PULL_SECRET_MIRROR_PREFIX = "warm-pull-"


def mirrored_secret_name(source: str) -> str:
    """The name of the watcher's copy of pull secret ``source`` ("namespace/name"): the same
    for the same source on every replica and after restarts, and 50 characters (<= 63)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:40]
    return f"{PULL_SECRET_MIRROR_PREFIX}{digest}"
