"""Helpers for the node worker's tests (shared by conftest.py and the test modules).

The only stand-in is :class:`CountingRuntime`, a wrapper that forwards every call to the real
CRI driver and counts pulls as they run, so that the concurrency bound and the merging of
duplicate pulls are measured on real pulls rather than assumed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery import Celery

from localcluster import PushedImage, Registry, product
from localcluster.services import NatsServer, RedisServer
from tasks.models import PullResult
from tasks.routing import queue_for_node
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


@dataclass
class Events:
    """Pull results published on NATS for one node, in arrival order."""

    received: list[PullResult] = field(default_factory=list)

    def add(self, _subject: str, data: bytes) -> None:
        self.received.append(PullResult.from_json(data))

    def of(self, image: str) -> list[PullResult]:
        return [event for event in self.received if event.image == image]

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.received}")
            time.sleep(0.05)


# This shared machine's disk is often fuller than the default budget; the budget's own test
# sets it explicitly.
ROOMY_DISK = 99.0


def worker_settings(nats_url: str, endpoint: str, **runtime: Any) -> Settings:
    base = load_settings({"WARM_NATS_URL": nats_url, "WARM_RUNTIME_ENDPOINT": endpoint})
    runtime.setdefault("disk_budget_percent", ROOMY_DISK)
    return replace(base, runtime=replace(base.runtime, **runtime))


def registry_requests(registry: Registry, fragment: str) -> list[str]:
    """Lines of the registry's access log that mention ``fragment`` (one per HTTP request)."""
    lines = registry.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if fragment in line and "HTTP/1.1" in line]


def payloads_of(events: Events) -> str:
    return "\n".join(json.dumps(event.__dict__, default=str) for event in events.received)


MakeAgent = Callable[..., tuple[NodeAgent, CountingRuntime]]
FreshImage = Callable[..., PushedImage]


READY_TIMEOUT = 30.0
WARM_TIMEOUT = 60.0


class Worker:
    """One ``python -m worker`` process for a node, and a Celery client to send it tasks."""

    def __init__(self, process: product.ProductProcess, node: str, broker_url: str) -> None:
        self.process = process
        self.node = node
        self.client = Celery("tests", broker=broker_url)
        self.client.conf.update(task_serializer="json", accept_content=["json"])

    def start(self) -> Worker:
        self.process.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while " ready." not in self.process.log_tail(20_000):
            if not self.process.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker not ready:\n{self.process.log_tail()}")
            time.sleep(0.1)
        return self

    def send(self, task: str, **kwargs: object) -> None:
        kwargs["node"] = self.node
        self.client.send_task(task, kwargs=kwargs, queue=queue_for_node(self.node))

    def stop(self) -> None:
        self.process.stop()
        self.client.close()


def start_worker(
    endpoint: str, redis: RedisServer, nats: NatsServer, logdir: Path, **env: str
) -> Worker:
    """``python -m worker`` on ``endpoint``, with short retry delays, once it consumes."""
    name = f"proc-{uuid.uuid4().hex[:6]}"
    broker = f"{redis.url}/2"
    settings = {
        "WARM_PULL_RETRY_BACKOFF_MAX": "2",
        "WARM_PULL_MAX_RETRIES": "10",
        "WARM_DISK_BUDGET_PERCENT": "99",
        "WARM_METRICS_PORT": "0",
        "WARM_HEALTH_PORT": "0",
        **env,
    }
    environment = product.product_env(
        broker_url=broker, nats_url=nats.url, kubeconfig=None, **settings
    )
    process = product.worker(name, endpoint, environment, logdir)
    return Worker(process, name, broker).start()
