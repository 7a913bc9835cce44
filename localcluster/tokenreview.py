"""ServiceAccount tokens and TokenReview, as the apiserver does them, for the API double.

A pod's projected ServiceAccount token (what the kubelet gets with TokenRequest and mounts) is
bound to the pod: a TokenReview answers with the ServiceAccount's user name and, in ``extra``,
the pod's name and uid and the node's name and uid (Kubernetes 1.30 and later), and only while
that pod exists with that uid; an audience that does not match, or an expired token, is not
authenticated. :class:`TokenAuthority` holds the tokens the double issued and reviews them with
the same rules, over the same JSON the real ``authentication.k8s.io/v1`` API speaks, so the
official client's ``create_token_review`` is what a test exercises.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
# What a token without its own audiences is for: the apiserver's own (its --api-audiences).
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
EXTRA = "authentication.kubernetes.io/"

# (plural, namespace, name) -> the stored object, or None when there is none
Lookup = Callable[[str, str | None, str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class BoundToken:
    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires: float
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    node_uid: str | None = None
    jti: str = ""


class TokenAuthority:
    """The tokens issued by the double and their reviews."""

    def __init__(self) -> None:
        self._tokens: dict[str, BoundToken] = {}

    def issue(
        self,
        lookup: Lookup,
        namespace: str,
        service_account: str,
        *,
        audiences: tuple[str, ...] = (API_AUDIENCE,),
        pod: str | None = None,
        expires_in: float = 3600,
        node_info: bool = True,
    ) -> str:
        """A token of ``service_account``, bound to ``pod`` (which must exist) when given:
        what the kubelet mounts into that pod. ``node_info=False``: as before Kubernetes 1.30,
        the token names the pod but not its node."""
        bound: dict[str, Any] = {}
        if pod is not None:
            found = lookup("pods", namespace, pod)
            if found is None:
                raise LookupError(f'pods "{pod}" not found in {namespace}')
            node = (found.get("spec") or {}).get("nodeName")
            node_object = lookup("nodes", None, node) if node else None
            bound = {"pod_name": pod, "pod_uid": found["metadata"]["uid"]}
            if node_info:
                bound["node_name"] = node
                bound["node_uid"] = (node_object or {}).get("metadata", {}).get("uid")
        token = secrets.token_urlsafe(32)
        self._tokens[token] = BoundToken(
            namespace,
            service_account,
            tuple(audiences),
            time.time() + expires_in,
            jti=secrets.token_hex(8),
            **bound,
        )
        return token

    def review(self, body: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
        """The TokenReview the apiserver would answer for ``body``."""
        spec = dict(body.get("spec") or {})
        wanted = list(spec.get("audiences") or [API_AUDIENCE])
        answer = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        token = self._tokens.get(str(spec.get("token") or ""))
        error = self._invalid(token, wanted, lookup)
        if token is None or error:
            answer["status"] = {"user": {}, "error": f"[invalid bearer token, {error}]"}
            return answer
        answer["status"] = {
            "authenticated": True,
            "user": _user(token),
            "audiences": [audience for audience in wanted if audience in token.audiences],
        }
        return answer

    @staticmethod
    def _invalid(token: BoundToken | None, wanted: list[str], lookup: Lookup) -> str:
        if token is None:
            return "token lookup failed"
        if not set(wanted) & set(token.audiences):
            return f"token audiences {list(token.audiences)} is invalid for the target audiences"
        if time.time() >= token.expires:
            return "service account token has expired"
        if token.pod_name:
            pod = lookup("pods", token.namespace, token.pod_name)
            if pod is None:
                return f'pods "{token.pod_name}" not found'
            if pod["metadata"].get("uid") != token.pod_uid:
                return f"pod {token.pod_name} uid ({pod['metadata'].get('uid')}) does not match"
        return ""


def _user(token: BoundToken) -> dict[str, Any]:
    extra = {f"{EXTRA}credential-id": [f"JTI={token.jti}"]}
    for key, value in (
        ("pod-name", token.pod_name),
        ("pod-uid", token.pod_uid),
        ("node-name", token.node_name),
        ("node-uid", token.node_uid),
    ):
        if value:
            extra[f"{EXTRA}{key}"] = [value]
    return {
        "username": f"system:serviceaccount:{token.namespace}:{token.service_account}",
        "uid": f"sa-{token.namespace}-{token.service_account}",
        "groups": [
            "system:serviceaccounts",
            f"system:serviceaccounts:{token.namespace}",
            "system:authenticated",
        ],
        "extra": extra,
    }
