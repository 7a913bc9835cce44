"""Kubernetes Events the watcher records: why it did something to an object, where people look.

``kubectl describe`` shows an object's Events, so that is where the startup gate says why it
removed a node's taint (an Event on the Node) and where a stopped wave names its failing canary
(an Event on each workload that uses the image). One seam writes them all: an Event that cannot
be written is logged in one line and never stops the caller.
"""

from __future__ import annotations

import datetime
import logging
import time

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

COMPONENT = "warm-images-watcher"
MESSAGE_LIMIT = 1024  # the apiserver refuses longer Event messages


class EventRecorder:
    def __init__(self, api: client.ApiClient, identity: str) -> None:
        self._core = client.CoreV1Api(api)
        self._identity = identity

    def record(
        self,
        namespace: str,
        involved: client.V1ObjectReference,
        reason: str,
        message: str,
        kind: str = "Normal",
    ) -> bool:
        """Create an Event on ``involved`` in ``namespace`` (a cluster-scoped object's go to
        "default"); False, logged, when the API refused or could not be reached."""
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{involved.name}.{time.time_ns():x}"),
            involved_object=involved,
            reason=reason,
            message=shortened(message, MESSAGE_LIMIT),
            type=kind,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._identity,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self._core.create_namespaced_event(namespace, event)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            what = f"{involved.kind} {namespace}/{involved.name}"
            log.warning("%s: event %s not recorded: %s", what, reason, error)
            return False
        return True


def shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
