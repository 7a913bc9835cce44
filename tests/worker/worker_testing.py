"""Helpers for the node worker's tests (shared by conftest.py and the test modules).

The only stand-in is :class:`CountingRuntime`, a wrapper that forwards every call to the real
CRI driver and counts pulls as they run, so that the concurrency bound and the merging of
duplicate pulls are measured on real pulls rather than assumed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from localcluster import PushedImage
from localcluster.harness import Events
from tasks.settings import Settings, load_settings
from worker.agent import NodeAgent
from worker.runtime import Credentials, FilesystemUsage, RuntimeImage
from worker.runtime.cri import CriRuntime


class CountingRuntime:
    """The real CRI driver, with a count of pull calls and of how many ran at once."""

    name = "cri"

    def __init__(self, inner: CriRuntime) -> None:
        self.inner = inner
        self.pulls: list[str] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str:
        with self._lock:
            self.pulls.append(reference)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self.inner.pull(reference, credentials=credentials, timeout=timeout)
        finally:
            with self._lock:
                self.active -= 1

    def version(self, timeout: float | None = None) -> str:
        return self.inner.version(timeout)

    def list_images(self) -> list[RuntimeImage]:
        return self.inner.list_images()

    def image_status(self, reference: str) -> RuntimeImage | None:
        return self.inner.image_status(reference)

    def remove(self, reference: str) -> None:
        self.inner.remove(reference)

    def filesystem_usage(self) -> FilesystemUsage:
        return self.inner.filesystem_usage()

    def close(self) -> None:
        self.inner.close()


# This shared machine's disk is often fuller than the default budget; the budget's own test
# sets it explicitly.
ROOMY_DISK = 99.0


def worker_settings(nats_url: str, endpoint: str, **runtime: Any) -> Settings:
    base = load_settings({"WARM_NATS_URL": nats_url, "WARM_RUNTIME_ENDPOINT": endpoint})
    runtime.setdefault("disk_budget_percent", ROOMY_DISK)
    return replace(base, runtime=replace(base.runtime, **runtime))


def payloads_of(events: Events) -> str:
    return "\n".join(json.dumps(event.__dict__, default=str) for event in events.received)


MakeAgent = Callable[..., tuple[NodeAgent, CountingRuntime]]
FreshImage = Callable[..., PushedImage]
