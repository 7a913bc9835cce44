"""The NATS credentials exchange: a part's Kubernetes identity in, a NATS user JWT out.

Per-node NATS permissions need a per-node identity, and a node already has one that the
cluster vouches for: the pods of the worker DaemonSet run as the worker's ServiceAccount, and
the token the kubelet projects into each pod is bound to that pod and names its node. A part
POSTs that token (audience ``warm-images``, so it is good for nothing else) and the public key
of an nkey it made to ``/nats/credentials``; the watcher asks the API with a TokenReview who
it is, and answers with a user JWT for that public key (tasks/natsauth.py):

* the ServiceAccount must be one that ``WARM_NATS_ROLES`` maps to a role, in the release
  namespace, and the token bound to a pod (not a long-lived Secret token);
* for a worker, the pod must still exist with that uid, run on the node the token names (the
  pod's own before Kubernetes 1.30, whose tokens name none) and as that ServiceAccount: its JWT
  lets it write that node's status key and events only. Any pod running as the worker's
  ServiceAccount in the release namespace counts as the release's worker: creating one takes
  rights there that reach the release's Secrets anyway;
* the watcher's own role is never handed out (only it writes the catalog).

The seed stays with the part, so the JWT travels in the clear; the token is short-lived and
bound to one audience. Every replica serves the exchange (it needs no leadership); a refusal is
logged with its reason and answered with one line saying it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from tasks import natsauth
from tasks.natscreds import USER_JWT_TTL
from tasks.probes import BackgroundServer, send_json
from tasks.settings import Settings

log = logging.getLogger(__name__)

PATH = "/nats/credentials"
MAX_BODY = 16 * 1024  # a projected token is about 1 KiB
EXTRA = "authentication.kubernetes.io/"
GRANTED = Counter(
    "warm_nats_credentials",
    "NATS user JWTs the watcher's exchange answered, by role, and refusals (role 'refused')",
    ["role"],
)


class Refused(Exception):
    """The exchange says no: ``status`` is the HTTP status, the message why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Identity:
    """Who a reviewed token belongs to."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.pod_name or '?'} ({self.service_account})"


class Exchange:
    """Checks identities and signs JWTs; the HTTP side is :class:`ExchangeServer`."""

    def __init__(
        self,
        api: client.ApiClient,
        keys: natsauth.AccountKeys,
        namespace: str,
        roles: Mapping[str, str],
        ttl: float = USER_JWT_TTL,
    ) -> None:
        self._reviews = client.AuthenticationV1Api(api)
        self._pods = client.CoreV1Api(api)
        self._keys, self._namespace, self._roles, self._ttl = keys, namespace, roles, ttl

    def credentials(self, token: str, public_key: str) -> tuple[str, str]:
        """(JWT, who it is for) for the part ``token`` proves; raises :class:`Refused`."""
        try:
            natsauth.check_user_key(public_key)  # before asking the API anything
        except natsauth.NatsAuthError as error:
            raise Refused(400, str(error)) from None
        identity = self._review(token)
        role = self._roles.get(identity.service_account)
        if identity.namespace != self._namespace or role is None:
            raise Refused(403, f"{identity.label} has no NATS role here")
        if not identity.pod_uid:
            raise Refused(403, f"{identity.label}: the token is not bound to a pod")
        node = None
        if role == "worker":
            node = self._check_worker_pod(identity)
        jwt = natsauth.user_jwt(self._keys, public_key, role, node=node, ttl=self._ttl)
        return jwt, f"{role}:{node}" if node else role

    def _review(self, token: str) -> Identity:
        spec = client.V1TokenReviewSpec(token=token, audiences=[natsauth.IDENTITY_AUDIENCE])
        try:
            review = self._reviews.create_token_review(client.V1TokenReview(spec=spec))
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            raise Refused(503, f"TokenReview failed: {_reason(error)}") from None
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            raise Refused(401, f"token not authenticated: {getattr(status, 'error', None)}")
        parts = (status.user.username or "").split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise Refused(403, f"{status.user.username} is not a ServiceAccount")
        extra: dict[str, list[str]] = status.user.extra or {}

        def first(key: str) -> str:
            values = extra.get(EXTRA + key) or [""]
            return values[0]

        return Identity(parts[2], parts[3], first("pod-name"), first("pod-uid"), first("node-name"))

    def _check_worker_pod(self, identity: Identity) -> str:
        """The node of a worker's pod, when the pod is what the token says it is. Before
        Kubernetes 1.30 a token names no node: the pod it is bound to (by uid) does, and a
        pod's node never changes once it is scheduled."""
        try:
            pod = self._pods.read_namespaced_pod(identity.pod_name, identity.namespace)
        except ApiException as error:
            status = 403 if error.status == 404 else 503
            raise Refused(status, f"{identity.label}: {_reason(error)}") from None
        except urllib3.exceptions.HTTPError as error:
            raise Refused(503, f"{identity.label}: {_reason(error)}") from None
        metadata, spec = (
            pod.metadata or client.V1ObjectMeta(),
            pod.spec or client.V1PodSpec(containers=[]),
        )
        node = identity.node_name or spec.node_name
        if not node:
            raise Refused(403, f"{identity.label}: the pod runs on no node yet")
        checks = (
            (metadata.uid, identity.pod_uid, "uid"),
            (spec.node_name, node, "node"),
            (spec.service_account_name, identity.service_account, "ServiceAccount"),
        )
        for actual, claimed, what in checks:
            if actual != claimed:
                raise Refused(403, f"{identity.label}: the pod's {what} is {actual}, not {claimed}")
        return node


def _reason(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return str(error) or type(error).__name__


class ExchangeServer(BackgroundServer):
    """Serves :class:`Exchange` at ``POST /nats/credentials`` on ``port``."""

    def __init__(self, exchange: Exchange, port: int, host: str = "") -> None:
        super().__init__(_handler(exchange), port, host, "nats-exchange")


def serve_exchange(settings: Settings, api: client.ApiClient) -> ExchangeServer | None:
    """The exchange, when this watcher holds the account key (NATS in operator mode)."""
    nats = settings.nats
    if not nats.account_key or not nats.credentials_port:
        return None
    keys = natsauth.AccountKeys.from_secret(nats.account_key)
    exchange = Exchange(api, keys, settings.release_namespace, dict(nats.roles))
    server = ExchangeServer(exchange, nats.credentials_port).start()
    log.info("NATS credentials exchange on port %d for %s", server.port, dict(nats.roles))
    return server


def _handler(exchange: Exchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # seconds a client may take to send its request: no thread held forever

        def do_POST(self) -> None:
            if self.path != PATH:
                send_json(self, 404, {"error": f"not found; POST {PATH}"})
                return
            try:
                token, public_key = self._request()
                jwt, who = exchange.credentials(token, public_key)
            except Refused as refused:
                GRANTED.labels("refused").inc()
                log.warning("NATS credentials refused (%d): %s", refused.status, refused)
                send_json(self, refused.status, {"error": str(refused)})
                return
            except Exception as error:  # a bug, or an API answer the client could not read
                GRANTED.labels("refused").inc()
                log.exception("NATS credentials exchange failed")
                send_json(self, 500, {"error": f"the exchange failed: {error!r}"})
                return
            GRANTED.labels(who.split(":")[0]).inc()
            log.debug("NATS credentials for %s", who)
            send_json(self, 200, {"jwt": jwt})

        def _request(self) -> tuple[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise Refused(400, f"a JSON body of at most {MAX_BODY} bytes is expected")
            try:
                body: Any = json.loads(self.rfile.read(length))
            except ValueError:
                raise Refused(400, "the body is not JSON") from None
            if not isinstance(body, dict) or not all(
                isinstance(body.get(key), str) for key in ("token", "publicKey")
            ):
                raise Refused(400, 'expected {"token": "...", "publicKey": "U..."}')
            return body["token"], body["publicKey"]

        def log_message(self, format: str, *args: Any) -> None:
            """Each exchange is logged above, with who asked."""

    return Handler
