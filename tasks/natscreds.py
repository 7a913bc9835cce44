"""A part's NATS credentials in operator mode: a user JWT it renews before expiry, and a seed.

Each connection (each bus session) makes its own user nkey: the seed never leaves the process,
only the public key goes into the JWT. Two ways to get the JWT (tasks/natsauth.py):

* :class:`MintedCredentials`: the watcher holds the account key and signs its own;
* :class:`ExchangedCredentials`: every other part proves who it is with its projected
  ServiceAccount token to the watcher's credentials endpoint (watcher/credentials.py), which
  answers with a JWT for that identity: a worker's user names its node.

A JWT lives :data:`USER_JWT_TTL` seconds and the server ends a connection whose JWT expires;
the bus renews in the background, at a random point between half and a third of the lifetime
left (so a fleet started at once does not ask at once), and reconnects with the new JWT: an
exchange endpoint that is down for less than that third costs nothing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from . import natsauth
from .settings import NatsSettings

log = logging.getLogger(__name__)

USER_JWT_TTL = 3600.0  # seconds a user JWT is valid: how long a revoked node keeps its access
RENEW_WHEN_LEFT = (1 / 3, 1 / 2)  # renew when a random share in this range is left


class CredentialsUnavailable(RuntimeError):
    """No JWT could be had; the message names what to fix."""


class Credentials(Protocol):
    def jwt(self) -> bytes:
        """The current JWT (nats-py's ``user_jwt_cb``); fetch one first with :meth:`renew`."""

    def sign(self, nonce: str) -> bytes:
        """The signed connect nonce (nats-py's ``signature_cb``)."""

    def renew(self) -> None:
        """Get a new JWT now (blocking); raises :class:`CredentialsUnavailable`."""

    def renew_in(self) -> float:
        """Seconds until the JWT should be renewed (0: now)."""


class _UserCredentials:
    """A user nkey and the JWT that names it; subclasses say where the JWT comes from."""

    def __init__(self) -> None:
        self._key = natsauth.new_user_key()
        self._lock = threading.Lock()
        self._jwt = b""
        self._renew_at = 0.0

    @property
    def public_key(self) -> str:
        return natsauth.public(self._key)

    def jwt(self) -> bytes:
        with self._lock:
            return self._jwt

    def sign(self, nonce: str) -> bytes:
        return natsauth.sign_nonce(self._key, nonce)

    def renew(self) -> None:
        token = self._fetch()
        try:
            claims = natsauth.decode_jwt(token)
        except natsauth.NatsAuthError as error:
            raise CredentialsUnavailable(f"the NATS user JWT got is unusable: {error}") from None
        issued = float(claims.get("iat", time.time()))
        expires = float(claims.get("exp", issued + USER_JWT_TTL))
        with self._lock:
            self._jwt = token.encode()
            self._renew_at = expires - (expires - issued) * random.uniform(*RENEW_WHEN_LEFT)

    def renew_in(self) -> float:
        with self._lock:
            return max(0.0, self._renew_at - time.time()) if self._jwt else 0.0

    def _fetch(self) -> str:
        raise NotImplementedError


class MintedCredentials(_UserCredentials):
    """Signed here with the account key: the watcher's own, or any part's in tests."""

    def __init__(
        self,
        keys: natsauth.AccountKeys,
        role: str,
        node: str | None = None,
        ttl: float = USER_JWT_TTL,
    ) -> None:
        super().__init__()
        self._keys, self._role, self._node, self._ttl = keys, role, node, ttl

    def _fetch(self) -> str:
        return natsauth.user_jwt(
            self._keys, self.public_key, self._role, node=self._node, ttl=self._ttl
        )


class ExchangedCredentials(_UserCredentials):
    """Asked of the watcher with this pod's ServiceAccount token (re-read each time: the
    kubelet rotates it)."""

    def __init__(self, url: str, token_file: str, timeout: float) -> None:
        super().__init__()
        self._url, self._token_file, self._timeout = url, token_file, timeout

    def _fetch(self) -> str:
        try:
            token = Path(self._token_file).read_text().strip()
        except OSError as error:
            raise CredentialsUnavailable(
                f"cannot read the ServiceAccount token WARM_NATS_IDENTITY_TOKEN_FILE="
                f"{self._token_file}: {error.strerror or error}"
            ) from None
        body = json.dumps({"token": token, "publicKey": self.public_key}).encode()
        request = urllib.request.Request(
            self._url, body, {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            reason = _error_text(error)
            raise CredentialsUnavailable(
                f"WARM_NATS_CREDENTIALS_URL={self._url} refused this pod's identity "
                f"({error.code}): {reason}"
            ) from None
        except (OSError, ValueError) as error:
            raise CredentialsUnavailable(
                f"WARM_NATS_CREDENTIALS_URL={self._url} did not answer: {error}"
            ) from None
        jwt = answer.get("jwt") if isinstance(answer, dict) else None
        if not isinstance(jwt, str):
            raise CredentialsUnavailable(f"WARM_NATS_CREDENTIALS_URL={self._url}: no jwt in answer")
        return jwt


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("error", error.reason))
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def credentials_for(settings: NatsSettings) -> Credentials | None:
    """The credentials the settings call for: minted with the account key (the watcher),
    exchanged for the pod's identity, or none (user and password, token, or no auth)."""
    if settings.account_key:
        keys = natsauth.AccountKeys.from_secret(settings.account_key)
        return MintedCredentials(keys, "watcher")
    if settings.credentials_url:
        return ExchangedCredentials(
            settings.credentials_url, settings.identity_token_file, settings.connect_timeout
        )
    return None
