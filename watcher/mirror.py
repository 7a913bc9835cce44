"""Pull secrets mirrored into a namespace of their own, so no node reads any other Secret.

Workloads name their registry credentials in ``imagePullSecrets``, in their own namespaces. A
node agent able to read those would hold ``get`` on Secrets cluster-wide, and root on one node
could read any Secret by name. Instead the leading watcher copies only the Secrets that
workloads in use reference, and only of the registry types, into the mirror namespace
(``WARM_PULL_SECRET_NAMESPACE``) under names it owns (:func:`tasks.names.mirrored_secret_name`),
labelled as its own; the catalog names only those copies, and the node's RBAC reaches only that
namespace. Not the release namespace: the release's own Secrets (the NATS, Redis and Flower
passwords) live there, and `get` on Secrets cannot be narrowed to names made at run time.

A copy follows its source: every ``pull_secret_sync_interval`` each referenced source is read
again (``get`` only, which works with a per-namespace Role and with the cluster-wide one alike;
a few per turn of the watcher's loop, so thousands of them never stall it) and the copy
rewritten when its type or data differ; a reference that appears is copied before the catalog
naming it is published, and the catalog names only copies that exist. A copy nothing references
any more is deleted, and so is one whose source is gone or no longer of a registry type. Copies
left by an earlier leader are found by their label (listed once per interval) and reconciled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tasks.names import mirrored_secret_name

from . import metrics

log = logging.getLogger(__name__)

REGISTRY_SECRET_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "warm-images"
COMPONENT = "app.kubernetes.io/component"
MIRROR_COMPONENT = "pull-secret-mirror"
SOURCE_NAMESPACE = "warm-images.io/source-namespace"
SOURCE_NAME = "warm-images.io/source-name"
SELECTOR = f"{MANAGED_BY}={MANAGER},{COMPONENT}={MIRROR_COMPONENT}"
_API_TIMEOUT = 10.0
REFRESH_BATCH = 20  # stale sources read again per sync; new ones are all copied at once


class SecretMirror:
    """Keeps the copies in ``namespace`` equal to the referenced registry Secrets."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        batch: int = REFRESH_BATCH,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._batch = batch
        self.namespace = namespace
        self._interval = interval
        self._clock = clock
        self._copies: dict[str, str] = {}  # source -> fingerprint of its copy
        self._read_at: dict[str, float] = {}  # referenced source -> when it was last read
        self._reported: set[str] = set()  # sources without a copy, logged already: once each
        self._next_list = 0.0  # when to list the copies again (the first sync does)

    @property
    def due(self) -> bool:
        """Whether a sync has work even without new references: a list, or a stale source."""
        now = self._clock()
        oldest = min(self._read_at.values(), default=now)
        return now >= self._next_list or now - oldest >= self._interval

    def resync(self) -> None:
        """List the copies and read every source on the next sync (a new leader)."""
        self._next_list = 0.0
        self._read_at.clear()

    def has_copy(self, source: str) -> bool:
        """Whether ``source`` has a copy now (the catalog names only those)."""
        return source in self._copies

    def sync(self, referenced: set[str]) -> set[str]:
        """Bring the copies in line with ``referenced`` ("namespace/name" sources): new ones
        copied at once, gone ones deleted, and up to ``batch`` stale ones read again, so
        thousands of sources never hold the caller long. Returns the sources whose copy
        appeared or went: their users' catalog entries change. API errors are retried."""
        before = set(self._copies)
        try:
            if self._clock() >= self._next_list:
                self._list()
                self._next_list = self._clock() + self._interval
                for source in set(self._read_at) - set(self._copies) - self._reported:
                    del self._read_at[source]  # its copy went behind our back: copy it again
            for source in set(self._read_at) - referenced:
                del self._read_at[source]
            for source in set(self._copies) - referenced:
                self._drop(source)
            for source in referenced - set(self._read_at):
                self._mirror(source)
            stale_before = self._clock() - self._interval
            stale = sorted((t, s) for s, t in self._read_at.items() if t <= stale_before)
            for _, source in stale[: self._batch]:
                self._mirror(source)
        except ApiException as error:
            log.error("pull secrets not mirrored, retrying (API status %s)", error.status)
            self._next_list = 0.0
        self._reported &= referenced
        metrics.PULL_SECRET_COPIES.set(len(self._copies))
        metrics.PULL_SECRETS_SKIPPED.set(len(self._reported))
        return before ^ set(self._copies)

    def _list(self) -> None:
        """The copies as they are, found by label: left by an earlier leader, or changed."""
        found: list[Any] = self._core.list_namespaced_secret(
            self.namespace, label_selector=SELECTOR, _request_timeout=_API_TIMEOUT
        ).items
        self._copies = {}
        for secret in found:
            source = _source_of(secret)
            if secret.metadata.name == mirrored_secret_name(source):
                self._copies[source] = _fingerprint(secret.type, secret.data)
            else:  # its annotations were edited: no source owns it
                self._delete(secret.metadata.name, source)

    def _mirror(self, source: str) -> None:
        namespace, _, name = source.partition("/")
        try:
            secret: Any = self._core.read_namespaced_secret(
                name, namespace, _request_timeout=_API_TIMEOUT
            )
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            self._skip(source, f"not readable ({error.status}): not mirrored")
            return
        if secret.type not in REGISTRY_SECRET_TYPES:
            kinds = ", ".join(REGISTRY_SECRET_TYPES)
            self._skip(source, f"ignored: type {secret.type} is not one of {kinds}")
            return
        self._reported.discard(source)
        fingerprint = _fingerprint(secret.type, secret.data)
        if self._copies.get(source) != fingerprint:
            self._write(source, secret.type, secret.data or {}, replace=source in self._copies)
            self._copies[source] = fingerprint
        self._read_at[source] = self._clock()

    def _write(self, source: str, kind: str, data: Mapping[str, Any], *, replace: bool) -> None:
        namespace, _, name = source.partition("/")
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=mirrored_secret_name(source),
                namespace=self.namespace,
                labels={MANAGED_BY: MANAGER, COMPONENT: MIRROR_COMPONENT},
                annotations={SOURCE_NAMESPACE: namespace, SOURCE_NAME: name},
            ),
            type=kind,
            data=dict(data),
        )
        copy = mirrored_secret_name(source)
        if not replace:
            try:
                self._core.create_namespaced_secret(
                    self.namespace, body, _request_timeout=_API_TIMEOUT
                )
                log.info("pull secret %s mirrored as %s/%s", source, self.namespace, copy)
                return
            except ApiException as error:
                if error.status != 409:  # 409: left by an earlier leader; replaced below
                    raise
        self._core.replace_namespaced_secret(
            copy, self.namespace, body, _request_timeout=_API_TIMEOUT
        )
        log.info("pull secret %s changed: %s/%s updated", source, self.namespace, copy)

    def _skip(self, source: str, reason: str) -> None:
        """No copy for ``source`` until it is read again and fits."""
        if source not in self._reported:
            log.warning("pull secret %s %s", source, reason)
            self._reported.add(source)
        self._read_at[source] = self._clock()
        self._drop(source)

    def _drop(self, source: str) -> None:
        """Delete the copy of ``source`` if there is one."""
        if self._copies.pop(source, None) is not None:
            self._delete(mirrored_secret_name(source), source)

    def _delete(self, name: str, source: str) -> None:
        try:
            self._core.delete_namespaced_secret(name, self.namespace, _request_timeout=_API_TIMEOUT)
        except ApiException as error:
            if error.status != 404:
                raise
        log.info("mirrored pull secret %s/%s of %s deleted", self.namespace, name, source)


def _source_of(secret: Any) -> str:
    annotations = secret.metadata.annotations or {}
    return f"{annotations.get(SOURCE_NAMESPACE, '')}/{annotations.get(SOURCE_NAME, '')}"


def _fingerprint(kind: str | None, data: Mapping[str, Any] | None) -> str:
    """What a copy must equal its source in, without keeping the credentials themselves."""
    text = json.dumps([kind, dict(data or {})], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
