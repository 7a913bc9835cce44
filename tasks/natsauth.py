"""NATS identities per part and per node: the permission lists, and the JWTs that carry them.

One NATS user shared by every node would let a compromised node rewrite any other node's
status. Per-node permissions need per-node identities, and a NATS server configured from a file
cannot learn new users without a reload (auth callout came only in nats-server 2.10). NATS's
decentralized auth can: the server trusts an *operator*, the operator signs an *account* (with
JetStream limits), and whoever holds the account's key signs *user* JWTs, each with its own
permissions and expiry, which the server checks on connect without knowing the users before.

This module is the single source of what each part may publish and subscribe to
(:func:`permissions`), and builds:

* the server's side (:func:`server_config`): operator, system account and application account,
  derived from one secret (``WARM_NATS_ACCOUNT_KEY``), for ``resolver: MEMORY``;
* user JWTs (:func:`user_jwt`): the watcher mints them for itself and, after checking a part's
  Kubernetes identity, for the others (watcher/exchange.py); a node's user may write only
  its own status key and its own event subjects.

A user JWT names a public key whose seed only its holder knows: the JWT alone grants nothing,
so it travels in the clear; the connecting client proves the seed by signing the server's nonce.

``python -m tasks.natsauth server-config [PATH]`` writes the server's operator-mode block (the
chart's NATS pod runs it before the server and includes the file); ``python -m tasks.natsauth
account`` prints the account's public key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from .names import (
    BEAT_BUCKET,
    CATALOG_BUCKET,
    CATALOG_EVENTS,
    KUBELET_BUCKET,
    PERMITS_BUCKET,
    PERMITS_FREED,
    STATUS_BUCKET,
    pull_events_subject,
    rewarm_events_subject,
)

ROLES = ("watcher", "worker", "beat", "client")
ACCOUNT_KEY_ENV = "WARM_NATS_ACCOUNT_KEY"
# The audience of the ServiceAccount tokens parts exchange for JWTs: good for nothing else.
IDENTITY_AUDIENCE = "warm-images"

_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


class NatsAuthError(ValueError):
    """A key or role that cannot be used; the message says which."""


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _read(bucket: str) -> list[str]:
    """Reading KV bucket <b> (stream KV_<b>): the stream's info, direct and message gets, and an
    ephemeral consumer to list keys; replies come back on _INBOX."""
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _write(
    bucket: str, keys: Iterable[str] = (">",), *, update: bool = False, purge: bool = False
) -> list[str]:
    """Reading <b>, creating it when it is missing (NATS restarted without storage), and
    writing ``keys``; ``update`` also lets the writer change the bucket's TTL, ``purge`` remove
    a key without a marker (the API cannot narrow a purge to ``keys``)."""
    stream = f"KV_{bucket}"
    extra = [f"$JS.API.STREAM.UPDATE.{stream}"] if update else []
    extra += [f"$JS.API.STREAM.PURGE.{stream}"] if purge else []
    return [*_read(bucket), f"$JS.API.STREAM.CREATE.{stream}", *extra] + [
        f"$KV.{bucket}.{key}" for key in keys
    ]


def permissions(role: str, node: str | None = None) -> Permissions:
    """What ``role`` may do. Nothing here lets a node write the catalog or the kubelet counts,
    create, purge or delete the catalog's stream, or announce catalog changes; a worker
    (``node`` required) writes only its own status key, its own event subjects and the
    registry pull permits (and says, and hears, that one was given back). The watcher may
    follow the events because the CLI run in its pod (``rewarm --wait``) does."""
    common = ["$JS.API.INFO"]
    if role == "watcher":
        publish = [*common, *_write(CATALOG_BUCKET), *_read(STATUS_BUCKET)]
        publish += _write(KUBELET_BUCKET)  # the kubelet's Pulled Events, counted by the leader
        publish += [CATALOG_EVENTS, f"{CATALOG_EVENTS}.>"]
        return Permissions(tuple(publish), ("_INBOX.>", "warm.events.>"))
    if role == "worker":
        if not node:
            raise NatsAuthError("a worker's NATS user needs its node's name")
        publish = [*common, *_read(CATALOG_BUCKET), *_write(STATUS_BUCKET, [node])]
        # The permits are shared by every node by design (a cluster-wide cap): a node's user
        # can take, renew and give back (purge) any of them, and tell the nodes waiting for
        # one that it gave one back.
        publish += _write(PERMITS_BUCKET, update=True, purge=True)
        publish += [pull_events_subject(node), rewarm_events_subject(node)]
        publish += [f"{PERMITS_FREED}.>"]
        return Permissions(tuple(publish), ("_INBOX.>", f"{PERMITS_FREED}.>"))
    if role == "beat":
        publish = [*common, *_read(CATALOG_BUCKET), *_read(STATUS_BUCKET)]
        publish += _write(BEAT_BUCKET, update=True)
        return Permissions(tuple(publish), ("_INBOX.>",))
    if role == "client":
        publish = [*common, *_read(CATALOG_BUCKET), *_read(STATUS_BUCKET), *_read(BEAT_BUCKET)]
        publish += _read(KUBELET_BUCKET)  # warm-status shows the kubelet counts
        return Permissions(tuple(publish), ("_INBOX.>", "warm.events.>"))
    raise NatsAuthError(f"unknown NATS role {role!r}: one of {', '.join(ROLES)}")


# ------------------------------------------------------------------------------------ keys


def _derived(secret: str, purpose: str, prefix: int) -> nkeys.KeyPair:
    """An nkey derived from ``secret``: the same secret gives the same keys on every start of
    the NATS server and of every watcher, so one stored secret is all they share."""
    raw = hmac.new(secret.encode(), f"warm-images/nats/{purpose}".encode(), hashlib.sha256)
    return nkeys.from_seed(nkeys.encode_seed(raw.digest(), prefix))


@dataclass(frozen=True)
class AccountKeys:
    """The operator, system account and application account of one installation."""

    operator: nkeys.KeyPair
    system: nkeys.KeyPair
    account: nkeys.KeyPair

    @classmethod
    def from_secret(cls, secret: str) -> AccountKeys:
        if len(secret) < 16:
            raise NatsAuthError(f"{ACCOUNT_KEY_ENV} must hold at least 16 characters")
        return cls(
            operator=_derived(secret, "operator", nkeys.PREFIX_BYTE_OPERATOR),
            system=_derived(secret, "system", nkeys.PREFIX_BYTE_ACCOUNT),
            account=_derived(secret, "account", nkeys.PREFIX_BYTE_ACCOUNT),
        )

    @property
    def account_public(self) -> str:
        return public(self.account)


def public(key: nkeys.KeyPair) -> str:
    return str(key.public_key.decode())


def new_user_key() -> nkeys.KeyPair:
    """A fresh user nkey; its seed never leaves the process that made it."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def sign_nonce(key: nkeys.KeyPair, nonce: str) -> bytes:
    """The answer to the server's connect challenge (nats-py's ``signature_cb``)."""
    return base64.b64encode(key.sign(nonce.encode()))


# ------------------------------------------------------------------------------------ JWTs


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """A NATS v2 JWT: ``claims`` with issuer and id, signed with ed25519 by ``issuer``."""
    body = {**claims, "iss": public(issuer)}
    body["jti"] = base64.b32encode(hashlib.sha256(_json(body)).digest()).decode().rstrip("=")
    signing_input = f"{_b64(_json(_JWT_HEADER))}.{_b64(_json(body))}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies; this is for reading expiry)."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    except (IndexError, ValueError) as error:
        raise NatsAuthError(f"not a NATS JWT: {error}") from None
    return claims


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def check_user_key(user_public: str) -> None:
    if not re.fullmatch(r"U[A-Z2-7]{55}", user_public):
        raise NatsAuthError("a user's public key is an nkey: U and 55 base32 characters")


def user_jwt(
    keys: AccountKeys,
    user_public: str,
    role: str,
    *,
    node: str | None = None,
    ttl: float,
    now: float | None = None,
) -> str:
    """A user JWT for ``user_public`` with ``role``'s permissions (a worker's for ``node``),
    valid ``ttl`` seconds: the server ends the connection when it expires."""
    check_user_key(user_public)
    allowed = permissions(role, node)
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": user_public,
        "name": f"{role}:{node}" if node else role,
        "iat": issued,
        "exp": issued + int(ttl),
        "nats": {
            "pub": {"allow": list(allowed.publish)},
            "sub": {"allow": list(allowed.subscribe)},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }
    return encode_jwt(claims, keys.account)


def server_config(keys: AccountKeys) -> str:
    """The operator-mode block of nats.conf: trust the operator, know both accounts in memory.

    The JWTs are the same for the same secret (``iat`` fixed), so a restart changes nothing."""
    system, account = public(keys.system), keys.account_public
    operator_jwt = encode_jwt(
        _claims(keys.operator, "warm-images", {"type": "operator", "system_account": system}),
        keys.operator,
    )
    system_jwt = encode_jwt(
        _claims(keys.system, "SYS", {"type": "account", "limits": _UNLIMITED}), keys.operator
    )
    limits = {**_UNLIMITED, **_JETSTREAM_UNLIMITED}
    account_jwt = encode_jwt(
        _claims(keys.account, "warm-images", {"type": "account", "limits": limits}),
        keys.operator,
    )
    return "\n".join(
        [
            f"operator: {operator_jwt}",
            f"system_account: {system}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f"  {system}: {system_jwt}",
            f"  {account}: {account_jwt}",
            "}",
            "",
        ]
    )


def _claims(subject: nkeys.KeyPair, name: str, nats: dict[str, Any]) -> dict[str, Any]:
    return {"sub": public(subject), "name": name, "iat": 0, "nats": {**nats, "version": 2}}


def main(argv: list[str]) -> int:
    secret = os.environ.get(ACCOUNT_KEY_ENV, "")
    try:
        keys = AccountKeys.from_secret(secret)
    except NatsAuthError as error:
        print(f"warm-images: {error}", file=sys.stderr)
        return 1
    if argv[:1] == ["server-config"] and len(argv) <= 2:
        config = server_config(keys)
        if len(argv) == 2:  # the chart's NATS pod: a file its nats.conf includes
            Path(argv[1]).write_text(config)
        else:
            sys.stdout.write(config)
    elif argv == ["account"]:
        print(keys.account_public)
    else:
        print("usage: python -m tasks.natsauth server-config [PATH] | account", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
