"""Pull secrets mirrored into the release namespace, so no node needs to read other namespaces.

Workloads name their registry credentials in ``imagePullSecrets``, in their own namespaces. A
node agent able to read those would hold ``get`` on Secrets cluster-wide, and root on one node
could read any Secret by name. Instead the leading watcher copies only the Secrets that
workloads in use reference, and only of the registry types, into the release namespace under
names it owns (:func:`tasks.names.mirrored_secret_name`), labelled as its own; the catalog names
only those copies, and the node's RBAC reaches only that namespace.

A copy follows its source: every ``pull_secret_sync_interval`` each referenced source is read
again (``get`` only, which works with a per-namespace Role and with the cluster-wide one alike)
and the copy rewritten when its type or data differ; a reference that appears is copied before
the catalog naming it is published. A copy nothing references any more is deleted, and so is
one whose source is gone or no longer of a registry type. Copies left by an earlier leader are
found by their label and reconciled on the first sync.
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


class SecretMirror:
    """Keeps the copies in ``namespace`` equal to the referenced registry Secrets."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self._interval = interval
        self._clock = clock
        self._copies: dict[str, str] = {}  # source -> fingerprint of its copy
        self._skipped: set[str] = set()  # sources missing or not of a registry type
        self._reported: set[str] = set()  # skipped sources logged already: once each
        self._next_full = 0.0  # the first sync is a full one

    @property
    def due(self) -> bool:
        """Whether the next sync reads every source again (the interval is over)."""
        return self._clock() >= self._next_full

    def resync(self) -> None:
        """Make the next sync a full one (a replica that becomes leader knows nothing)."""
        self._next_full = 0.0

    def has_copy(self, source: str) -> bool:
        """Whether ``source`` has a copy now (the catalog names only those)."""
        return source in self._copies

    def sync(self, referenced: set[str], *, full: bool = False) -> set[str]:
        """Bring the copies in line with ``referenced`` ("namespace/name" sources); returns
        the sources whose copy appeared or went, whose users' catalog entries change. When the
        API fails, the next sync is a full one."""
        before = set(self._copies)
        try:
            if full or self.due:
                self._full_sync(referenced)
                self._next_full = self._clock() + self._interval
            else:
                for source in referenced - set(self._copies) - self._skipped:
                    self._mirror(source)
                for source in set(self._copies) - referenced:
                    self._drop(source)
                self._skipped &= referenced
        except ApiException as error:
            log.error("pull secrets not mirrored, retrying (API status %s)", error.status)
            self._next_full = 0.0
        self._reported &= referenced
        return before ^ set(self._copies)

    def _full_sync(self, referenced: set[str]) -> None:
        """Read every referenced source again, and forget nothing: copies found by label too."""
        found: list[Any] = self._core.list_namespaced_secret(
            self.namespace, label_selector=SELECTOR, _request_timeout=_API_TIMEOUT
        ).items
        self._copies, self._skipped = {}, set()
        for secret in found:
            source = _source_of(secret)
            if secret.metadata.name == mirrored_secret_name(source):
                self._copies[source] = _fingerprint(secret.type, secret.data)
            else:  # its annotations were edited: no source owns it
                self._delete(secret.metadata.name, source)
        for source in referenced:
            self._mirror(source)
        for source in set(self._copies) - referenced:
            self._drop(source)

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
        if self._copies.get(source) == fingerprint:
            return
        self._write(source, secret.type, secret.data or {}, replace=source in self._copies)
        self._copies[source] = fingerprint

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
        """No copy for ``source`` until the next full sync reads it again."""
        if source not in self._reported:
            log.warning("pull secret %s %s", source, reason)
            self._reported.add(source)
        self._skipped.add(source)
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
