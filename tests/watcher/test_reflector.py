"""The reflector on its own: retries with backoff, pages, kinds the API refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException
from watcher_testing import wait_for

from watcher.reflector import Event, Listed, Reflector


class Answer:
    """A raw (``_preload_content=False``) response: a list page, or an empty watch."""

    def __init__(self, page: dict[str, Any] | None = None) -> None:
        self.data = json.dumps(page or {}).encode()

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from ()

    def release_conn(self) -> None:
        """Nothing to release."""

    def close(self) -> None:
        """Nothing to close."""


class FlakyApi:
    """Fails the first ``failures`` calls with ``status``, then serves two list pages."""

    def __init__(self, failures: int, status: int) -> None:
        self.failures, self.status = failures, status
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Answer:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            raise ApiException(status=self.status, reason="test")
        if kwargs.get("watch"):
            return Answer()
        if kwargs.get("_continue") == "page2":
            return Answer({"metadata": {"resourceVersion": "7"}, "items": [_pod("b")]})
        return Answer({"metadata": {"continue": "page2"}, "items": [_pod("a")]})


def _pod(name: str) -> dict[str, Any]:
    labels = {"app": "web"} if name == "b" else None
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}}


def run(api: FlakyApi) -> tuple[Reflector, list[Event]]:
    events: list[Event] = []
    reflector = Reflector(
        "Pod", api, lambda obj: obj["metadata"]["name"], events.append, max_backoff=0.05
    )
    return reflector.start(), events


def test_api_errors_are_retried_and_lists_are_paged() -> None:
    api = FlakyApi(failures=3, status=500)
    reflector, events = run(api)
    try:
        assert reflector.synced.wait(10)
        assert events[0] == Listed("Pod", None, {"ns/a": "a", "ns/b": "b"})
        assert reflector.resource_version == "7"
        wait_for(lambda: any(call.get("watch") for call in api.calls), what="a watch")
        watch = next(call for call in api.calls if call.get("watch"))
        assert watch["resource_version"] == "7" and watch["allow_watch_bookmarks"]
    finally:
        reflector.stop()


def test_a_kind_the_api_does_not_serve_counts_as_empty_and_stays_healthy() -> None:
    reflector, events = run(FlakyApi(failures=1000, status=404))
    try:
        assert reflector.synced.wait(10)
        assert events == [Listed("Pod", None, {})]
        assert reflector.last_contact > 0
    finally:
        reflector.stop()


def test_a_forbidden_kind_does_not_hold_back_the_start_but_is_not_heard_from() -> None:
    reflector, events = run(FlakyApi(failures=1000, status=403))
    try:
        assert reflector.synced.wait(10)
        assert events == [Listed("Pod", None, {})]
        assert reflector.last_contact == 0  # /healthz reports it stale
    finally:
        reflector.stop()


def test_a_malformed_object_is_skipped_and_the_others_arrive() -> None:
    def summarize(obj: dict[str, Any]) -> str:
        return str(obj["metadata"]["labels"]["app"])  # raises for pod a, which has none

    api = FlakyApi(failures=0, status=500)
    events: list[Event] = []
    reflector = Reflector("Pod", api, summarize, events.append, max_backoff=0.05).start()
    try:
        assert reflector.synced.wait(10)
        assert events == [Listed("Pod", None, {"ns/b": "web"})]
    finally:
        reflector.stop()
