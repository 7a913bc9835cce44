"""Per-node queues: the only routing the system needs.

Every node worker consumes exactly one queue, ``warm.node.<node-name>``, so a message for a node
is a message in that queue and nothing else: no broadcast (fan-out exchanges lose messages on
Redis), no topic matching, and a node's backlog is visible as one queue's depth.
"""

from __future__ import annotations

import re

QUEUE_PREFIX = "warm.node."

# Kubernetes node names are DNS subdomains (RFC 1123), so they are safe in queue names,
# NATS subjects and KV keys alike.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class InvalidNodeName(ValueError):
    """A node name that is not a Kubernetes DNS subdomain."""


def check_node_name(node: str) -> str:
    if not node or len(node) > 253 or not _NODE_NAME.fullmatch(node):
        raise InvalidNodeName(
            f"invalid node name {node!r}: a node name is a DNS subdomain "
            "(lowercase letters, digits, '-' and '.', at most 253 characters)"
        )
    return node


def queue_for_node(node: str) -> str:
    """The queue that node ``node``'s worker consumes."""
    return QUEUE_PREFIX + check_node_name(node)
