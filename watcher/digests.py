"""Tags resolved to manifest digests once, by the leading watcher, for the whole cluster.

Without this every node asks the registry what ``:latest`` is now, on every re-warm: 5,000
manifest requests per image per interval, which Docker Hub and ECR count against their rate
limits. Instead the leader sends one ``HEAD /v2/<repository>/manifests/<tag>`` per image per
re-warm interval, reads ``Docker-Content-Digest``, and puts the digest in the slices and the
catalog entries; a node compares it with what its runtime holds and asks the registry nothing
when they agree.

The client is a small one on ``requests`` (already installed with the kubernetes client),
chosen over oras-py: oras-py sets no request timeout, keeps one bearer token per client
whatever the repository scope, and picks Basic or token auth up front instead of following
the registry's challenge. Here the registry's ``WWW-Authenticate`` challenge decides: Basic
sends the pull secret's user and password; Bearer asks the named token endpoint (with the
same credentials, or anonymously) for a pull token of that repository, cached per scope until
it expires. An unreachable or refusing registry leaves the last known digest in place: a
digest is a hint for nodes, never a reason to mark anything failed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from tasks.images import DEFAULT_REGISTRY, ImageRef, parse_image
from worker.runtime import Credentials

from . import metrics

log = logging.getLogger(__name__)

# Every manifest kind a tag may point to; a registry answers with the one it holds, and its
# Docker-Content-Digest is the digest containerd records for the tag.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
USER_AGENT = "warm-images-watcher"  # how its requests read in a registry's access log
DOCKER_HUB_API = "registry-1.docker.io"  # docker.io's API host, as containerd uses it
_LOOPBACK = ("localhost", "127.", "[::1]")  # plain HTTP, as docker and containerd allow
_TOKEN_LIFETIME = 60.0  # seconds, when the token endpoint does not say (its spec's default)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

CredentialLookup = Callable[[ImageRef, Sequence[str]], list[Credentials]]


class ResolveFailed(Exception):
    """The registry did not tell the digest; the message says why, in one line."""


@dataclass
class _Token:
    value: str
    expires: float


class ManifestClient:
    """HEADs manifests, following the registry's Basic or Bearer challenge."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._local = threading.local()  # a requests.Session is not thread-safe
        self._tokens: dict[tuple[str, str, str], _Token] = {}  # (registry, scope, identity)
        self._basic: set[str] = set()  # registries that asked for Basic: sent up front
        self._lock = threading.Lock()

    def digest(self, image: ImageRef, candidates: Sequence[Credentials] = ()) -> str:
        """The digest ``image``'s tag points to now; each candidate tried until one works."""
        if image.digest:
            return image.digest
        tries: list[Credentials | None] = [*candidates] or [None]
        error = ResolveFailed(f"{image}: no credentials tried")
        for auth in tries:
            try:
                return self._head(image, auth)
            except ResolveFailed as failed:
                error = failed
        raise error

    def _head(self, image: ImageRef, auth: Credentials | None) -> str:
        url = f"{_base_url(image.registry)}/v2/{image.repository}/manifests/{image.tag}"
        headers = {"Accept": MANIFEST_TYPES, "User-Agent": USER_AGENT}
        key = (image.registry, f"repository:{image.repository}:pull", _identity(auth))
        token = self._cached(key)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif auth is not None and auth.username and image.registry in self._basic:
            headers["Authorization"] = _basic(auth)
        response = self._request("HEAD", url, headers)
        if response.status_code == 401:
            headers["Authorization"] = self._answer(response, key, auth)
            response = self._request("HEAD", url, headers)
        if response.status_code != 200:
            raise ResolveFailed(f"{image}: registry answered {response.status_code} to HEAD")
        found = response.headers.get("Docker-Content-Digest")
        if not found:
            raise ResolveFailed(f"{image}: registry sent no Docker-Content-Digest header")
        return found

    def _answer(
        self, response: requests.Response, key: tuple[str, str, str], auth: Credentials | None
    ) -> str:
        """The Authorization header that answers ``response``'s challenge."""
        scheme, _, params = response.headers.get("WWW-Authenticate", "").partition(" ")
        if scheme.lower() == "basic":
            if auth is None or not auth.username:
                raise ResolveFailed(f"{key[0]}: registry wants Basic auth and no pull secret fits")
            with self._lock:
                self._basic.add(key[0])
            return _basic(auth)
        if scheme.lower() != "bearer":
            raise ResolveFailed(f"{key[0]}: unsupported auth challenge {scheme!r}")
        challenge = dict(_CHALLENGE_PARAM.findall(params))
        realm = challenge.get("realm")
        if not realm:
            raise ResolveFailed(f"{key[0]}: Bearer challenge names no token realm")
        query = {"scope": challenge.get("scope", key[1])}
        if "service" in challenge:
            query["service"] = challenge["service"]
        headers = {"User-Agent": USER_AGENT}
        if auth is not None and auth.identity_token:
            # An identity token is an OAuth2 refresh token: exchanged by POST, as containerd does.
            form = {**query, "grant_type": "refresh_token", "client_id": USER_AGENT}
            form["refresh_token"] = auth.identity_token
            reply = self._request("POST", realm, headers, data=form)
        else:
            if auth is not None and auth.username:
                headers["Authorization"] = _basic(auth)
            reply = self._request("GET", realm, headers, params=query)
        if reply.status_code != 200:
            raise ResolveFailed(f"{key[0]}: token endpoint answered {reply.status_code}")
        body = reply.json()
        token = str(body.get("token") or body.get("access_token") or "")
        if not token:
            raise ResolveFailed(f"{key[0]}: token endpoint sent no token")
        lifetime = float(body.get("expires_in") or _TOKEN_LIFETIME)
        with self._lock:
            self._tokens[key] = _Token(token, time.monotonic() + lifetime * 0.9)
        return f"Bearer {token}"

    def _cached(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None or token.expires <= time.monotonic():
                self._tokens.pop(key, None)
                return None
            return token.value

    def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> requests.Response:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            return session.request(
                method, url, headers=dict(headers), params=params, data=data, timeout=self._timeout
            )
        except requests.RequestException as error:
            raise ResolveFailed(f"{url}: {type(error).__name__}") from None


class DigestResolver:
    """The leader's digests: refreshed every ``interval`` on a thread of their own.

    The watcher's main loop owns the catalog; it hands over what to resolve
    (:meth:`offer`) when a round is due and picks up the images whose digest moved
    (:meth:`changed`). Nothing here blocks the loop on a registry.
    """

    def __init__(
        self,
        credentials: CredentialLookup,
        *,
        interval: float,
        timeout: float = 10.0,
        concurrency: int = 8,
        client: ManifestClient | None = None,
    ) -> None:
        self._credentials = credentials
        self._interval = interval
        self._client = client or ManifestClient(timeout)
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._digests: dict[str, str] = {}
        self._changed: dict[str, str | None] = {}  # image -> its digest before the change
        self._wanted: dict[str, tuple[str, ...]] = {}
        self._full = False  # whether what is wanted is the whole catalog (a round)
        self._offered = threading.Event()
        self._next_round = 0.0  # math.inf while a round is offered or running

    def digest(self, image: str) -> str | None:
        """The last digest resolved for ``image``; None while unknown."""
        with self._lock:
            return self._digests.get(image)

    @property
    def due(self) -> bool:
        """Whether the next round waits for :meth:`offer`."""
        return time.monotonic() >= self._next_round

    def refresh(self) -> None:
        """Resolve at the next offer, not at the end of the interval (a new leader: the
        digests it holds may be older than the previous leader's)."""
        self._next_round = 0.0

    def offer(self, images: Mapping[str, tuple[str, ...]]) -> None:
        """Resolve the whole catalog, ``images`` (image → its pull secrets), in a round."""
        with self._lock:
            self._wanted, self._full, self._next_round = dict(images), True, math.inf
            for gone in set(self._digests) - set(images):
                del self._digests[gone]
        self._offered.set()

    def add(self, images: Mapping[str, tuple[str, ...]]) -> None:
        """Resolve ``images`` new to the catalog now, not at the next round."""
        with self._lock:
            new = {image: s for image, s in images.items() if image not in self._digests}
            self._wanted.update(new)
        if new:
            self._offered.set()

    def changed(self) -> dict[str, str | None]:
        """Images whose digest changed since the last call, with the digest they had before
        (None: the first one learned)."""
        with self._lock:
            changed, self._changed = self._changed, {}
            return changed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._offered.wait(1.0):
                continue
            with self._lock:
                wanted, full, self._wanted, self._full = self._wanted, self._full, {}, False
                self._offered.clear()
            self.resolve(wanted)
            if full:
                self._next_round = time.monotonic() + self._interval

    def resolve(self, images: Mapping[str, tuple[str, ...]]) -> None:
        """One round: every image's tag resolved, ``concurrency`` registry requests at once."""
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="digest") as pool:
            found = dict(zip(images, pool.map(self._one, images.items()), strict=True))
        with self._lock:
            for image, digest in found.items():
                before = self._digests.get(image)
                if digest is None:
                    metrics.DIGEST_LOOKUPS.labels("failed").inc()
                    continue
                moved = before is not None and before != digest
                metrics.DIGEST_LOOKUPS.labels("moved" if moved else "resolved").inc()
                if before != digest:
                    self._digests[image] = digest
                    self._changed.setdefault(image, before)

    def _one(self, item: tuple[str, tuple[str, ...]]) -> str | None:
        image, secrets = item
        try:
            ref = parse_image(image)
            return self._client.digest(ref, self._credentials(ref, secrets))
        except ResolveFailed as error:
            log.warning("digest of %s not resolved, keeping the last known: %s", image, error)
        except Exception:  # a bug here must not stop the other images' digests
            log.exception("digest of %s not resolved", image)
        return None


def _base_url(registry: str) -> str:
    host = DOCKER_HUB_API if registry == DEFAULT_REGISTRY else registry
    scheme = "http" if host.startswith(_LOOPBACK) else "https"
    return f"{scheme}://{host}"


def _identity(auth: Credentials | None) -> str:
    """Whose token it is: a hash of the credentials, so another password gets its own token
    and the cache holds no secret in the clear."""
    if auth is None:
        return ""
    text = "\0".join((auth.username, auth.password, auth.identity_token))
    return hashlib.sha256(text.encode()).hexdigest()


def _basic(auth: Credentials) -> str:
    pair = f"{auth.username}:{auth.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()
