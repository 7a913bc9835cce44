"""The least OpenAPI v3 that lets kubectl create and apply files against the API double.

``kubectl apply -f`` and ``kubectl create -f`` validate by default (``--validate=strict``).
kubectl first asks /openapi/v3 whether the server validates fields itself: it looks, in the
group-version's document, for a PATCH operation tagged with the kind's
``x-kubernetes-group-version-kind`` that takes the ``fieldValidation`` query parameter. If none,
it downloads the whole schema to validate on the client, and fails where there is none
("failed to download openapi"). So each group-version gets a document with that one operation
per kind, and no schemas: the double keeps what it is sent, as it would after a server-side
validation that found nothing to say. ``kubectl explain`` has no schemas to explain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

PREFIX = "/openapi/v3"


def _url_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def index(group_versions: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The /openapi/v3 discovery document: one URL per group-version."""
    paths = {}
    for group, version in sorted(set(group_versions)):
        path = _url_path(group, version)
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        paths[path] = {"serverRelativeURL": f"{PREFIX}/{path}?hash={digest}"}
    return {"paths": paths}


def document(group: str, version: str, kinds: Iterable[tuple[str, str, bool]]) -> dict[str, Any]:
    """The document of one group-version; ``kinds`` are (plural, kind, namespaced)."""
    paths = {}
    base = "/" + _url_path(group, version)
    for plural, kind, namespaced in kinds:
        scope = f"{base}/namespaces/{{namespace}}" if namespaced else base
        paths[f"{scope}/{plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{kind}",
                "x-kubernetes-group-version-kind": {
                    "group": group,
                    "version": version,
                    "kind": kind,
                },
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes API double", "version": "unversioned"},
        "paths": paths,
    }


def parse_path(path: str) -> tuple[str, str] | None:
    """(group, version) of /openapi/v3/api/v1 or /openapi/v3/apis/G/V; None otherwise."""
    parts = path[len(PREFIX) :].strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) == 2:
        return "", parts[1]
    if parts[:1] == ["apis"] and len(parts) == 3:
        return parts[1], parts[2]
    return None
