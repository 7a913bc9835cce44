"""A Kubernetes API double over real HTTP, for the watcher and anything using `kubernetes`.

No kube-apiserver can be installed on these machines. kmock (by the author of kopf) serves a
Kubernetes-like HTTP API that the official client lists and watches over real HTTP, but on its
own it lacks what a watcher depends on; this module adds that on top of kmock 0.8:

* one global, growing metadata.resourceVersion stamped on every ADDED/MODIFIED/DELETED, uid and
  creationTimestamp on create, the current resourceVersion on lists, typed list envelopes;
* watches from a resourceVersion replay the retained history (no synthetic ADDED), while "" or
  "0" start with synthetic ADDED events of the current state, as the apiserver does;
* compact() and expire_next_watches() make watches from old versions end with a 410 ERROR event,
  kick() ends every live watch (an apiserver restart), allowWatchBookmarks gives BOOKMARKs and
  timeoutSeconds is honoured;
* equality-based labelSelector and metadata.name/metadata.namespace/spec.nodeName fieldSelector;
* PUT (replace_*, e.g. kubernetes.leaderelection's LeaseLock) with 409 on a stale
  resourceVersion; kmock 0.8 has no PUT;
* a JSON patch whose ``test`` op fails (a guard on metadata.resourceVersion) is refused with
  422, as the apiserver does, where kmock answers 500;
* Namespace objects: kmock 0.8 reads /api/v1/namespaces/NAME as a namespace scope;
* what kubectl needs (issue 12): protobuf request bodies read as JSON (kubeproto), Table answers
  to ``as=Table`` (kubetables), strategic-merge PATCH for client-side apply and apply-patch
  for server-side apply (strategicmerge), and no metrics.k8s.io, which only metrics-server has;
* a request log in Kubernetes verbs (requests()), so a test can prove what a component did
  *not* ask for, e.g. that no worker read a Secret a task message named;
* ServiceAccount tokens bound to pods (issue_token(), what the kubelet mounts) and TokenReview
  with the apiserver's rules (localcluster/tokenreview.py).

Every other kind, Secrets included, is served by kmock as is: get, list, watch, create, update,
patch and delete, in namespaces.

It is a double, not a cluster: no controllers run, so a Deployment creates no Pods and there is
no admission or defaulting. The server runs in its own thread with its own event loop, so the
synchronous client under test can call it from the test's thread. It leans on kmock internals,
hence the pin on kmock 0.8.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import copy
import datetime
import gzip
import importlib.resources
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kubernetes.client
import yaml
from kmock._internal import aiobus, parsing, references, rendering

from localcluster import (
    kubeevents,
    kubeopenapi,
    kubeproto,
    kubetables,
    strategicmerge,
    tokenreview,
)
from localcluster._lifecycle import Service

T = TypeVar("T")
Event = dict[str, Any]
Resource = references.resource

# kmock keeps every request (and every failed one) for assertions; a long benchmark would grow
# without bound, so keep only the recent ones.
_KEEP_REQUESTS = 1000
_STOP_GRACE = 0.05

# Events are stored once, as core/v1; a request to events.k8s.io/v1 is served from the same
# objects, converted (localcluster/kubeevents.py), as the apiserver does.
CORE_EVENTS = Resource("", "v1", "events")
EVENTS_V1 = Resource("events.k8s.io", "v1", "events")
_EVENTS_VIEW: contextvars.ContextVar[bool] = contextvars.ContextVar("events_view", default=False)


# --- kmock 0.8 path fix: Namespace objects --------------------------------------------------

_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """Route /api/v1/namespaces[/NAME[/status|finalize]] to the namespaces resource itself.

    kmock reads those paths as a namespace *scope*, so POST /api/v1/namespaces fails with 500
    and GET /api/v1/namespaces/NAME with 404; /api/v1/namespaces/NS/<plural>/... is unchanged.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) in (3, 4) or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath("", "v1", "namespaces", None, name, sub)
    return _kmock_parse_path(path)


if getattr(parsing.parse_path, "__module__", "") != __name__:  # patch once, even if reloaded
    parsing.parse_path = _parse_path


# --- selectors ------------------------------------------------------------------------------


def _terms(selector: str | None) -> list[str]:
    return [term.strip() for term in (selector or "").split(",") if term.strip()]


def _match_label_term(labels: Mapping[str, str], term: str) -> bool:
    if "!=" in term:
        key, value = term.split("!=", 1)
        return labels.get(key.strip()) != value.strip()
    if "=" in term:
        key, value = term.replace("==", "=").split("=", 1)
        return labels.get(key.strip()) == value.strip()
    if term.startswith("!"):
        return term[1:] not in labels
    return term in labels


def match_labels(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Equality-based label selectors: a=b, a==b, a!=b, a, !a (set-based ones are not needed)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(_match_label_term(labels, term) for term in _terms(selector))


def match_fields(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Field selectors on dotted paths (metadata.name, spec.nodeName, reason,
    involvedObject.name, ...) and the core/v1 Events' ``source`` (its component)."""
    for term in _terms(selector):
        negated = "!=" in term
        key, value = term.split("!=" if negated else "=", 1)
        if (_field(obj, key.strip().rstrip("=")) == value.strip().lstrip("=")) == negated:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> Any:
    if path == "source":  # the apiserver's name for core/v1 Events' source.component
        return (obj.get("source") or {}).get("component")
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


# --- the emulator ---------------------------------------------------------------------------


class _StampingBus(aiobus.Bus[Event]):
    """Gives every event the emulator puts the next global resourceVersion, and records it."""

    def __init__(self, owner: RVEmulator, resource: Resource) -> None:
        super().__init__()
        self._owner = owner
        self._resource = resource

    async def put(self, *items: Event) -> None:
        stamped = []
        for event in items:
            self._owner.rv += 1
            # kmock's event objects share their metadata dict with the stored object, so this
            # also stamps the stored object.
            event["object"].setdefault("metadata", {})["resourceVersion"] = str(self._owner.rv)
            event = copy.deepcopy(event)
            self._owner.record(self._owner.rv, self._resource, event)
            stamped.append(event)
        await super().put(*stamped)


class _BusDict(dict[Resource, aiobus.Bus[Any]]):
    def __init__(self, owner: RVEmulator) -> None:
        super().__init__()
        self._owner = owner

    def __missing__(self, resource: Resource) -> aiobus.Bus[Any]:
        bus = self[resource] = _StampingBus(self._owner, resource)
        return bus


@attrs.define(kw_only=True)
class RVEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with resourceVersions, selectors, bookmarks, 410s and PUT."""

    rv: int = 1
    history: list[tuple[int, Resource, Event]] = attrs.field(factory=list)
    compacted_rv: int = 0
    bookmark_interval: float = 1.0
    expire_next: int = 0  # the next N watches from a resourceVersion get 410 Gone
    live: set[asyncio.Queue[Event | None]] = attrs.field(factory=set)  # for kick()
    # Events kept for watches from a past resourceVersion. Like etcd's compaction, older ones
    # are dropped, and watches from before them get 410: memory stays bounded in long runs.
    history_limit: int = 20_000
    # What the double did to its clients, counted as it happened: "410 Gone" (a watch ended
    # with an Expired ERROR event), "watch dropped" (a live stream ended by kick()) and
    # "<plural> streamed" (watch events sent, bookmarks aside). Drills and benchmarks report
    # these, not how often they asked for them.
    served: collections.Counter[str] = attrs.field(factory=collections.Counter)
    events_v1: bool = True  # False: events.k8s.io/v1 answers 404, as before Kubernetes 1.19
    tokens: tokenreview.TokenAuthority = attrs.field(factory=tokenreview.TokenAuthority)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_data(_bundled_resources())  # kinds without objects list as []
        self._buses = _BusDict(self)

    def compact(self) -> None:
        """Forget history: watches from any resourceVersion before now get 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv

    def record(self, rv: int, resource: Resource, event: Event) -> None:
        """Keep an event for watches from an older resourceVersion, within history_limit."""
        self.history.append((rv, resource, event))
        excess = len(self.history) - self.history_limit
        if excess > self.history_limit // 10:  # trim in batches, not on every event
            self.compacted_rv = self.history[excess - 1][0]
            del self.history[:excess]

    def kick(self) -> None:
        """End every live watch stream, as an apiserver restart or request timeout would."""
        for queue in list(self.live):
            queue.put_nowait(None)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            raw_request = await _with_json_body(raw_request)
        except kubeproto.UnsupportedBody as exc:
            error = kmock.KubernetesError(415, "UnsupportedMediaType", str(exc))
            return await self._render_error(error)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource == EVENTS_V1:
            if not self.events_v1:
                raise kmock.KubernetesResourceNotFoundError()
            return await self._handle_events_view(request)
        if request.url.path.startswith(kubeopenapi.PREFIX):
            return aiohttp.web.json_response(self._openapi(request.url.path))
        if request.url.path == tokenreview.PATH and request.method == kmock.method.POST:
            review = self.tokens.review(request.data or {}, self.stored)
            return aiohttp.web.json_response(review, status=201)
        if _is_merging_patch(request):
            await self._merge_patch(request)
        if request.subresource == "scale" and isinstance(request.data, dict):
            # A Scale written (PUT) or patched: only its replicas reach the workload. Absent
            # means 0: Go omits a zero replicas from a Scale's JSON.
            replicas = (request.data.get("spec") or {}).get("replicas", 0)
            object.__setattr__(request, "data", {"spec": {"replicas": replicas}})
            object.__setattr__(request, "action", kmock.action.UPDATE)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            _stamp_new_object(request)
        if _is_replace(request):
            await self._replace(request)
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            # kmock answers 500; the apiserver 422, and a guarded patch is told apart by it.
            raise kmock.KubernetesError(422, "Invalid", f"JSON patch failed: {error}") from error
        finally:
            self._trim_records()

    async def _handle_events_view(self, request: rendering.Request) -> Any:
        """An events.k8s.io/v1 request, served from (and to) the core/v1 Events: the body is
        converted here, the answers by :func:`_viewed` while this request is handled."""
        object.__setattr__(request, "resource", CORE_EVENTS)  # Request is frozen
        if isinstance(request.data, dict) and request.data:
            object.__setattr__(request, "data", kubeevents.to_core(request.data))
        token = _EVENTS_VIEW.set(True)
        try:
            return await self._handle(request)
        finally:
            _EVENTS_VIEW.reset(token)

    def stored(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A core (v1) object as stored now, or None when there is none."""
        key = (Resource("", "v1", plural), namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(dict(self._objects[key]))

    def _openapi(self, path: str) -> dict[str, Any]:
        kinds: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
        for resource in self._get_resources():
            info = self.resources[resource]
            group, version = resource.group, resource.version
            if info.kind and resource.plural and group is not None and version is not None:
                entry = (resource.plural, info.kind, bool(info.namespaced))
                kinds.setdefault((group, version), []).append(entry)
        if path.rstrip("/") == kubeopenapi.PREFIX:
            return kubeopenapi.index(kinds)
        group_version = kubeopenapi.parse_path(path)
        if group_version not in kinds:
            raise kmock.KubernetesNotFoundError()
        return kubeopenapi.document(*group_version, kinds[group_version])

    def _trim_records(self) -> None:
        if len(self._requests) > 2 * _KEEP_REQUESTS:
            del self._requests[:-_KEEP_REQUESTS]
        for errors in self._errors:
            del errors[:-_KEEP_REQUESTS]

    async def _replace(self, request: rendering.Request) -> None:
        """PUT as a full replacement with the apiserver's optimistic concurrency.

        The object is replaced in place here, then the request goes on as kmock's UPDATE, which
        emits MODIFIED and returns the object.
        """
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            stored = self.objects[key]
            current = dict(stored.get("metadata") or {})
            wanted = (request.data.get("metadata") or {}).get("resourceVersion")
            if wanted and str(wanted) != str(current.get("resourceVersion")):
                raise _conflict(request.resource, request.name)
            _store(stored, request.data)
        object.__setattr__(request, "action", kmock.action.UPDATE)  # Request is frozen

    async def _merge_patch(self, request: rendering.Request) -> None:
        """A strategic-merge or apply PATCH, computed here; kmock then stores the result as the
        UPDATE it reads PATCH as. A server-side apply of a missing object creates it."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                if not _is_apply(request):
                    raise kmock.KubernetesObjectNotFoundError()
                object.__setattr__(request, "action", kmock.action.CREATE)
                return
            stored = self.objects[key]
            merged = strategicmerge.apply(copy.deepcopy(stored.raw), request.data)
            _store(stored, merged)
        object.__setattr__(request, "data", merged)
        object.__setattr__(request, "action", kmock.action.UPDATE)

    def _visible(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (
            (request.namespace is None or meta.get("namespace") == request.namespace)
            and (request.name is None or meta.get("name") == request.name)
            and match_labels(obj, request.params.get("labelSelector"))
            and match_fields(obj, _field_selector(request))
        )

    def _type_meta(self, resource: Resource | None) -> tuple[str | None, str]:
        """(kind, apiVersion) of a resource, from kmock's bundled discovery data."""
        if resource is None:
            return None, "v1"
        if _EVENTS_VIEW.get():
            return "Event", kubeevents.GROUP_VERSION
        api_version = f"{resource.group}/{resource.version}" if resource.group else "v1"
        return self.resources[resource].kind, api_version

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        data = cast(dict[str, Any], await super()._serve_list(request))
        data["metadata"]["resourceVersion"] = str(self.rv)
        data["items"] = [_viewed(obj) for obj in data["items"] if self._visible(request, obj)]
        kind, api_version = self._type_meta(request.resource)
        if kubetables.wants_table(_header(request, "Accept")):
            return self._table(request, data["items"], kind)
        if kind:  # the real apiserver sends typed list envelopes
            data.setdefault("kind", f"{kind}List")
            data.setdefault("apiVersion", api_version)
        return data

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """kmock's resource list, fixed where kubectl's discovery reads it differently."""
        data = cast(dict[str, Any], await super()._serve_version(request))
        # kmock says "/v1" for the core group; kubectl keys resources by this exact string and
        # finds no "v1" then: `kubectl get pods` says "the server doesn't have a resource type".
        data["groupVersion"] = data["groupVersion"].lstrip("/")
        for resource in data["resources"]:
            if "/" in resource["name"]:
                # Subresources have no names of their own; kmock copies the parent's, and
                # kubectl warns that "deploy" could also mean deployments/scale.
                resource.update(singularName="", shortNames=[], categories=[])
            if resource["name"].endswith("/scale"):  # kubectl scale picks its type from here
                resource.update(group="autoscaling", version="v1", kind="Scale")
        return data

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return _viewed(cast(dict[str, Any], await super()._serve_create(request)))

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return _viewed(cast(dict[str, Any], await super()._serve_delete(request)))

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = _viewed(cast(dict[str, Any], await super()._serve_fetch(request)))
        if request.subresource == "scale":
            return _scale(obj)
        if kubetables.wants_table(_header(request, "Accept")):
            return self._table(request, [obj], obj.get("kind"))
        return obj

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        # kmock applies a .../scale PATCH ({"spec": {"replicas": N}}) to the object itself,
        # which is where the replicas live; the client expects the Scale back.
        obj = _viewed(cast(dict[str, Any], await super()._serve_update(request)))
        return _scale(obj) if request.subresource == "scale" else obj

    def _table(
        self, request: rendering.Request, objs: list[Any], kind: str | None
    ) -> dict[str, Any]:
        include = request.params.get("includeObject") or "Metadata"
        return kubetables.table(objs, kind, str(self.rv), include)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now, even if no event comes
        assert request.resource is not None
        rv = request.params.get("resourceVersion") or "0"
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            if self._expired(rv):
                self.served["410 Gone"] += 1
                yield _gone(rv, self.compacted_rv)
                await bus.unmark(marker)
                return
            backlog = self._backlog(request.resource, rv)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        pump = asyncio.create_task(_pump(bus, marker, queue))
        self.live.add(queue)
        try:
            streamed = f"{request.resource.plural} streamed"
            for event in backlog:
                if self._visible(request, event["object"]):
                    self.served[streamed] += 1
                    yield _viewed_event(event)
            async for event in self._follow(request, queue):
                if event["type"] != "BOOKMARK":
                    self.served[streamed] += 1
                yield _viewed_event(event)
        finally:
            pump.cancel()
            self.live.discard(queue)

    def _expired(self, rv: str) -> bool:
        if rv == "0":
            return False
        if self.expire_next > 0:
            self.expire_next -= 1
            return True
        return int(rv) < self.compacted_rv

    def _backlog(self, resource: Resource, rv: str) -> list[Event]:
        if rv == "0":
            return [
                {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                for (res, _, _), obj in self.objects.items()
                if res == resource and not obj.deleted
            ]
        return [event for r, res, event in self.history if r > int(rv) and res == resource]

    async def _follow(
        self, request: rendering.Request, queue: asyncio.Queue[Event | None]
    ) -> AsyncIterator[Event]:
        """Live events until timeoutSeconds or kick(); BOOKMARKs in quiet spells if asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.params.get("timeoutSeconds") or 3600)
        bookmarks = request.params.get("allowWatchBookmarks") in ("true", "True", "1")
        while (left := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(queue.get(), min(left, self.bookmark_interval))
            except TimeoutError:
                if bookmarks:
                    yield self._bookmark(request.resource)
                continue
            if event is None:  # kicked
                self.served["watch dropped"] += 1
                return
            if self._visible(request, event["object"]):
                yield event

    def _bookmark(self, resource: Resource | None) -> Event:
        kind, api_version = self._type_meta(resource)
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": kind or "Status",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.rv)},
            },
        }


def _viewed(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the API version asked for serves it: converted for events.k8s.io/v1."""
    return kubeevents.to_events_v1(obj) if _EVENTS_VIEW.get() else obj


def _viewed_event(event: Event) -> Event:
    if not _EVENTS_VIEW.get() or event["type"] == "BOOKMARK":
        return event
    return {**event, "object": kubeevents.to_events_v1(event["object"])}


def _field_selector(request: rendering.Request) -> str | None:
    selector = request.params.get("fieldSelector")
    if not selector or not _EVENTS_VIEW.get():
        return selector
    return ",".join(kubeevents.core_field(term.strip()) for term in selector.split(","))


def _bundled_resources() -> bytes:
    """kmock's bundled discovery data (builtin kinds of a recent cluster).

    Read here rather than by ResourcesArray.load_bundled(), whose importlib.resources call
    warns of deprecation on every start.
    """
    blob = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
    docs = json.loads(gzip.decompress(blob.read_bytes()))
    # metrics.k8s.io is served by metrics-server, which this double has not: listed, its
    # "nodes" and "pods" would shadow the core kinds in kubectl (their singularName is empty,
    # which kmock serves as the plural), and `kubectl get nodes` would list NodeMetrics.
    served = [doc for doc in docs if not doc["groupVersion"].startswith("metrics.k8s.io/")]
    return json.dumps(served).encode()


async def _pump(
    bus: aiobus.Bus[Event], marker: aiobus.BusMark[Event], queue: asyncio.Queue[Event | None]
) -> None:
    async for event in bus.stream(since=marker):
        await queue.put(event)


def _stamp_new_object(request: rendering.Request) -> None:
    meta = request.data.setdefault("metadata", {})
    meta.setdefault("uid", str(uuid.uuid4()))
    now = datetime.datetime.now(datetime.UTC)
    meta.setdefault("creationTimestamp", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if request.namespace:
        meta.setdefault("namespace", request.namespace)


def _store(stored: Any, new: Mapping[str, Any]) -> None:
    """Replace a stored object in place, keeping what the server owns in its metadata."""
    current = dict(stored.get("metadata") or {})
    replacement = copy.deepcopy(dict(new))
    kept = ("uid", "creationTimestamp", "name", "namespace", "resourceVersion")
    replacement["metadata"] = {
        **(replacement.get("metadata") or {}),
        **{k: current[k] for k in kept if k in current},
    }
    stored.clear()
    stored.update(replacement)


def _scale(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale of a workload (``kubectl scale``)."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)},
    }


def _header(request: rendering.Request, name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in request.headers.items() if k.lower() == wanted), "")


def _is_apply(request: rendering.Request) -> bool:
    return _header(request, "Content-Type").startswith("application/apply-patch")


def _is_merging_patch(request: rendering.Request) -> bool:
    content_type = _header(request, "Content-Type")
    return (
        request.method == kmock.method.PATCH
        and request.resource is not None
        and request.name is not None
        and request.subresource is None
        and isinstance(request.data, dict)
        and content_type.startswith(
            ("application/strategic-merge-patch+json", "application/apply-patch")
        )
    )


async def _with_json_body(raw: aiohttp.web.BaseRequest) -> aiohttp.web.BaseRequest:
    """The request with a protobuf or YAML body replaced by its JSON, which kmock parses.

    The headers stay as sent, so that a server-side apply is still told by its Content-Type.
    """
    content_type = raw.headers.get("Content-Type", "")
    if not content_type.startswith((kubeproto.PROTOBUF, "application/apply-patch+yaml")):
        return raw
    clone = raw.clone()  # before reading: aiohttp clones no request whose body it has read
    if content_type.startswith(kubeproto.PROTOBUF):
        data = kubeproto.decode(await raw.read())
    else:
        data = yaml.safe_load(await raw.read())
    clone._read_bytes = json.dumps(data).encode()  # what read(), text() and json() return
    return clone


def _is_replace(request: rendering.Request) -> bool:
    return (
        request.method == kmock.method.PUT
        and request.action is None
        and request.resource is not None
        and request.name is not None
        and request.subresource is None
        and isinstance(request.data, dict)
    )


def _conflict(resource: Resource, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=409,
        reason="Conflict",
        message=(
            f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again"
        ),
    )


def _gone(rv: str, compacted_rv: int) -> Event:
    return {
        "type": "ERROR",
        "object": {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "reason": "Expired",
            "code": 410,
            "message": f"too old resource version: {rv} ({compacted_rv})",
        },
    }


# --- the request log ------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """One request the double served, as RBAC would see it."""

    verb: str  # get, list, watch, create, update, patch, delete, or the HTTP method
    resource: str | None  # plural, e.g. "secrets"
    namespace: str | None
    name: str | None
    user_agent: str = ""  # which client asked: the double has no users, clients can differ here


_VERBS = {
    kmock.action.FETCH: "get",
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.CREATE: "create",
    kmock.action.DELETE: "delete",
}


def _api_request(request: rendering.Request) -> ApiRequest:
    verb = _VERBS.get(request.action) if request.action is not None else None
    if request.action == kmock.action.UPDATE:  # a PUT became UPDATE in _replace
        verb = "patch" if request.method == kmock.method.PATCH else "update"
    return ApiRequest(
        verb or str(request.method.value).lower(),
        request.resource.plural if request.resource is not None else None,
        request.namespace,
        request.name,
        request.headers.get("User-Agent", ""),
    )


# --- the server thread ----------------------------------------------------------------------


class FakeKubeAPI(Service):
    """RVEmulator behind kmock's HTTP server on 127.0.0.1:<random port>, in its own thread."""

    def __init__(
        self,
        *,
        bookmark_interval: float = 1.0,
        history_limit: int = 20_000,
        events_v1: bool = True,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self.events_v1 = events_v1  # False: events.k8s.io/v1 is not served (before 1.19)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._emulator: RVEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. "http://127.0.0.1:40123"."""
        if self._url is None:
            raise RuntimeError("fake Kubernetes API not started")
        return self._url

    @property
    def emulator(self) -> RVEmulator:
        """The emulator; touch it from the test thread only through call()."""
        if self._emulator is None:
            raise RuntimeError("fake Kubernetes API not started")
        return self._emulator

    def start(self, timeout: float = 10) -> FakeKubeAPI:
        if self._thread is not None:
            raise RuntimeError("a FakeKubeAPI starts once; create another one")
        self._thread = threading.Thread(target=self._run, name="fake-kube-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None or self._url is None:
            self.stop()
            raise RuntimeError(f"fake Kubernetes API did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 10) -> None:
        """End live watches and shut the server down. Idempotent."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(timeout)

    def call(self, fn: Callable[[RVEmulator], T], timeout: float = 5) -> T:
        """Run fn(emulator) on the server's loop under the emulator's lock; return its result."""
        if self._loop is None:
            raise RuntimeError("fake Kubernetes API not started")
        emulator = self.emulator

        async def locked() -> T:
            async with emulator._lock:
                return fn(emulator)

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            locked(), self._loop
        )
        return future.result(timeout)

    def compact(self) -> None:
        """Watches from any resourceVersion before now get a 410 ERROR event."""
        self.call(lambda emulator: emulator.compact())

    def kick(self) -> None:
        """End every live watch stream, as an apiserver restart would."""
        self.call(lambda emulator: emulator.kick())

    def expire_next_watches(self, n: int) -> None:
        """The next `n` watches from a resourceVersion get a 410 ERROR event, whatever it is."""

        def expire(emulator: RVEmulator) -> None:
            emulator.expire_next = n

        self.call(expire)

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        audiences: tuple[str, ...] = (tokenreview.API_AUDIENCE,),
        pod: str | None = None,
        expires_in: float = 3600,
        node_info: bool = True,
    ) -> str:
        """A ServiceAccount token, bound to ``pod`` when given (the pod must exist): the token
        the kubelet projects into that pod. TokenReview authenticates it while it is valid;
        ``node_info=False`` leaves the node out of it, as apiservers before 1.30 do."""

        def issue(emulator: RVEmulator) -> str:
            return emulator.tokens.issue(
                emulator.stored,
                namespace,
                service_account,
                audiences=audiences,
                pod=pod,
                expires_in=expires_in,
                node_info=node_info,
            )

        return self.call(issue)

    def served(self) -> dict[str, int]:
        """What the double has done to its clients so far (see RVEmulator.served)."""
        return self.call(lambda emulator: dict(emulator.served))

    def requests(self, resource: str | None = None) -> list[ApiRequest]:
        """The requests served so far (the last 1,000 or more), oldest first; only those on
        ``resource`` (a plural, e.g. "secrets") when given."""
        served = self.call(lambda emulator: [_api_request(r) for r in emulator])
        return [r for r in served if resource is None or r.resource == resource]

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig pointing at this API, for load_kube_config() or KUBECONFIG."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "localcluster", "cluster": {"server": self.url}}],
            # The double checks no credentials; a token keeps clients on their normal path.
            "users": [{"name": "localcluster", "user": {"token": "localcluster"}}],
            "contexts": [
                {
                    "name": "localcluster",
                    "context": {
                        "cluster": "localcluster",
                        "user": "localcluster",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "localcluster",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        return path

    def api_client(self) -> kubernetes.client.ApiClient:
        """A client of the official `kubernetes` package talking to this API over HTTP."""
        return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url))

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        emulator = RVEmulator(
            bookmark_interval=self.bookmark_interval,
            history_limit=self.history_limit,
            events_v1=self.events_v1,
        )
        async with emulator, kmock.Server(emulator) as server:
            self._emulator = emulator
            self._url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopping.wait()
            emulator.kick()  # so the server does not wait for open watches to end
            await asyncio.sleep(_STOP_GRACE)
