"""Registry credentials for one pull: read when the pull starts, dropped when it ends.

The catalog names pull secrets ("namespace/name") and never carries their content, so a NATS
dump leaks nothing. The names are those of the watcher's copies in the mirror namespace
(``WARM_PULL_SECRET_NAMESPACE``, ``warm-pull-…``, see watcher/mirror.py); the worker reads
them from the Kubernetes API at pull time (a rotated password works at the next pull) and
refuses, without asking the API, any other name: its RBAC is ``get`` on Secrets of that
namespace only, which holds nothing but the copies, and this keeps a bad catalog entry from
making it ask for anything else even where the namespace is shared (outside the chart). It
falls back to the node's own credentials file (kubelet's config.json) when configured.

Matching follows kubelet: a docker config maps registry keys ("host[:port][/path]", optionally
with a scheme, a ``*`` glob in the host) to credentials; a key matches an image when its host
matches the image's registry (ports must match) and its path is a prefix of the repository; in
each config the most specific key wins. Like kubelet, every secret's match is a candidate, tried
in order until one is accepted. Nothing here logs a credential or puts one in an exception.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.images import DEFAULT_REGISTRY, ImageRef
from tasks.names import PULL_SECRET_MIRROR_PREFIX
from tasks.settings import RuntimeSettings

from .runtime import Credentials

log = logging.getLogger(__name__)

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
_DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_API_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Key:
    host: str  # may hold a '*' glob
    path: str

    def matches(self, image: ImageRef) -> bool:
        if not fnmatch.fnmatchcase(image.registry, self.host):
            return False
        return not self.path or f"{image.repository}/".startswith(f"{self.path}/")

    @property
    def specificity(self) -> tuple[int, int]:
        return (0 if "*" in self.host else 1, len(self.path))


class CredentialSource:
    """Finds the credentials for an image among its pull secrets and the node's file."""

    def __init__(self, settings: RuntimeSettings, namespace: str, api: Any = None) -> None:
        """``namespace``: the mirror namespace, the only one whose Secrets are read;
        ``api``: a CoreV1Api to read them with (the watcher's), else one is configured here."""
        self._use_secrets = settings.pull_secrets
        self._namespace = namespace
        self._kubelet_file = settings.kubelet_credentials_file
        self._api: Any = api
        self._lock = threading.Lock()
        if self._use_secrets and api is None:
            # Importing the kubernetes client takes seconds on a busy node: do it now, not
            # in the first private pull (which waits on the lock if it comes first).
            threading.Thread(target=self._core_api, name="kube-connect", daemon=True).start()

    def for_image(self, image: ImageRef, secrets: Sequence[str]) -> list[Credentials]:
        """Credentials to try for ``image``, in order; empty to pull anonymously."""
        configs = [self._read_secret(name) for name in secrets] if self._use_secrets else []
        if self._kubelet_file:
            configs.append(_read_file(self._kubelet_file))
        candidates = [match(auths, image) for auths in configs]
        return [found for found in candidates if found is not None]

    def version(self, secrets: Sequence[str]) -> str:
        """Which content ``secrets`` hold now (their resourceVersions), so that an image refused
        under one password is tried again once the watcher copied a fixed one."""
        if not self._use_secrets or not secrets:
            return ""
        found = (self._fetch(name, quiet=True) for name in secrets)
        return ",".join(str(s.metadata.resource_version) if s else "-" for s in found)

    def _read_secret(self, name: str) -> dict[str, Any]:
        secret = self._fetch(name)
        if secret is None:
            return {}
        return auths_of_secret(secret.type or "", secret.data or {})

    def _fetch(self, name: str, *, quiet: bool = False) -> Any:
        """The Secret ``name`` from the API; None when it is not a copy, or not readable."""
        namespace, _, secret_name = name.partition("/")
        if namespace != self._namespace or not secret_name.startswith(PULL_SECRET_MIRROR_PREFIX):
            if not quiet:
                log.warning(
                    "pull secret %s ignored: only %s/%s* copies are read",
                    name,
                    self._namespace,
                    PULL_SECRET_MIRROR_PREFIX,
                )
            return None
        api = self._core_api()
        if api is None:
            return None
        try:
            return api.read_namespaced_secret(secret_name, namespace, _request_timeout=_API_TIMEOUT)
        except Exception as error:  # a missing secret means an anonymous pull, as in kubelet
            if not quiet:
                status = getattr(error, "status", None) or type(error).__name__
                log.warning("pull secret %s not readable (%s): pulling without it", name, status)
            return None

    def _core_api(self) -> Any:
        with self._lock:
            if self._api is None:
                self._api = _connect()
            return self._api or None


def _connect() -> Any:
    """A CoreV1Api from the in-cluster config, else KUBECONFIG; False when neither works."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # Named here: the client reads KUBECONFIG once, when it is first imported.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        except (config.ConfigException, OSError, TypeError) as error:
            log.warning("no Kubernetes API configuration, pull secrets unused: %s", error)
            return False
    return client.CoreV1Api(client.ApiClient(configuration))


def auths_of_secret(kind: str, data: dict[str, str]) -> dict[str, Any]:
    """The registry map of a ``dockerconfigjson`` or ``dockercfg`` secret's base64 data."""
    field = {DOCKERCONFIGJSON: ".dockerconfigjson", DOCKERCFG: ".dockercfg"}.get(kind)
    if field is None or field not in data:
        return {}
    try:
        document = json.loads(base64.b64decode(data[field]))
    except (binascii.Error, ValueError):
        return {}
    return _auths(document)


def match(auths: dict[str, Any], image: ImageRef) -> Credentials | None:
    """The credentials of the most specific key of ``auths`` that matches ``image``."""
    candidates = [(key, entry) for raw, entry in auths.items() if (key := _parse_key(raw))]
    found = [(key, entry) for key, entry in candidates if key.matches(image)]
    if not found:
        return None
    _, entry = max(found, key=lambda item: item[0].specificity)
    return _credentials(entry)


def _read_file(path: str) -> dict[str, Any]:
    try:
        return _auths(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as error:
        log.warning("credentials file %s not readable: %s", path, type(error).__name__)
        return {}


def _auths(document: Any) -> dict[str, Any]:
    """config.json has {"auths": {...}}; the older .dockercfg is the map itself."""
    if not isinstance(document, dict):
        return {}
    auths = document.get("auths", document)
    return auths if isinstance(auths, dict) else {}


def _parse_key(raw: str) -> _Key | None:
    text = raw.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    host, _, path = text.partition("/")
    if not host:
        return None
    if host in _DOCKER_HUB_HOSTS:  # "https://index.docker.io/v1/" is Docker Hub, whole
        return _Key(DEFAULT_REGISTRY, "")
    return _Key(host, path.strip("/"))


def _credentials(entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if not username and entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"])).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
    token = str(entry.get("identitytoken") or entry.get("identityToken") or "")
    if not (username or token):
        return None
    return Credentials(username=username, password=password, identity_token=token)
