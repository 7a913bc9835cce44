"""Driving and observing the product's processes, for tests, fault drills and benchmarks.

A node worker started as users start it (``python -m worker``) with a Celery client to send it
tasks, and the pull results it publishes on NATS collected in arrival order.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from celery import Celery

from localcluster import product
from localcluster.registry import Registry
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import PullResult
from tasks.routing import queue_for_node

READY_TIMEOUT = 30.0
WARM_TIMEOUT = 60.0


@dataclass
class Events:
    """Pull results published on NATS for one node, in arrival order."""

    received: list[PullResult] = field(default_factory=list)

    def add(self, _subject: str, data: bytes) -> None:
        self.received.append(PullResult.from_json(data))

    @classmethod
    def follow(cls, bus: NatsBus, subject: str) -> Events:
        """Collect every pull result published on ``subject`` from now on."""
        events = cls()
        bus.subscribe(subject, events.add)
        return events

    def of(self, image: str) -> list[PullResult]:
        return [event for event in self.received if event.image == image]

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        wait_for(check, timeout, what, lambda: f"events so far: {self.received}")


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

    def send(self, task: str, **kwargs: object) -> str:
        """Send ``task`` to this node's queue; its task id."""
        kwargs["node"] = self.node
        return str(self.client.send_task(task, kwargs=kwargs, queue=queue_for_node(self.node)).id)

    def stop(self) -> None:
        self.process.stop()
        self.client.close()


def start_worker(
    endpoint: str,
    redis: RedisServer,
    nats: NatsServer,
    logdir: Path,
    *,
    node: str | None = None,
    **env: str,
) -> Worker:
    """``python -m worker`` on ``endpoint``, with short retry delays, once it consumes; for
    ``node`` (default: a new name), so a test may give the node a catalog slice first."""
    name = node or f"proc-{uuid.uuid4().hex[:6]}"
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


def tcp_connections(pid: int, port: int) -> int:
    """TCP connections from process ``pid`` to 127.0.0.1:``port`` (e.g. a worker's to its
    broker), read from /proc: the process's own view, so no other client is counted."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().name
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            count += 1
    return count


def registry_requests(registry: Registry, fragment: str) -> list[str]:
    """Lines of the registry's access log that mention ``fragment`` (one per HTTP request)."""
    lines = registry.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if fragment in line and "HTTP/1.1" in line]


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: ""
) -> float:
    """Poll ``check`` until true; the seconds it took. On timeout the error carries ``logs()``,
    read then (not when the wait began), so it shows what the processes did meanwhile."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.05)
    return time.monotonic() - started


def wait_for_download(registry: Registry, image_ref: str, timeout: float = WARM_TIMEOUT) -> None:
    """Return once the registry has served the start of a layer of ``image_ref``: the moment
    a drill kills or stops a worker mid-pull."""
    repository = image_ref.split("/", 1)[1].rsplit(":", 1)[0]
    deadline = time.monotonic() + timeout
    while not registry_requests(registry, f"GET /v2/{repository}/blobs/"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no layer of {image_ref} was requested in {timeout:.0f}s")
        time.sleep(0.01)


def unavailable(reason: str) -> NoReturn:
    """A real part a test needs is missing: a failure under CI, which must provide every part
    (``.ci/run`` installs and starts them), and a skip on a developer's partial machine."""
    import pytest  # only tests call this; benchmarks and the demo import harness without pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must provide it", pytrace=False)
    pytest.skip(reason)


class TaskEvents:
    """Celery's own task events (what Flower reads) on ``broker_url``, collected as they come.

    Started before the tasks it should see: on Redis, events are published to whoever listens
    at that moment.
    """

    def __init__(self, broker_url: str) -> None:
        self.received: list[dict[str, Any]] = []
        self._app = Celery("task-events", broker=broker_url)
        self._app.conf.update(event_serializer="json", accept_content=["json"])
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, name="task-events", daemon=True)

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        # Until our own event comes back, the receiver may not be listening yet.
        with self._app.events.default_dispatcher() as ping:
            wait_for(lambda: self._pinged(ping), READY_TIMEOUT, "the event receiver")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)
        self._app.close()

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event.get("uuid") == task_id]

    def chain(self, task_id: str) -> list[str]:
        """``task_id`` and the tasks sent from it and theirs (retries are), in order."""
        children = [
            event["uuid"]
            for event in self.received
            if event["type"] == "task-received" and event.get("root_id") == task_id
        ]
        return list(dict.fromkeys([task_id, *children]))

    def first(
        self, task_id: str, kind: str, timeout: float = WARM_TIMEOUT, *, chain: bool = False
    ) -> dict[str, Any]:
        """The first ``task-<kind>`` event of ``task_id`` (or, with ``chain``, of it and the
        tasks sent from it), waiting for it if need be."""
        wanted = f"task-{kind}"

        def found() -> list[dict[str, Any]]:
            tasks = set(self.chain(task_id)) if chain else {task_id}
            return [e for e in self.received if e["type"] == wanted and e.get("uuid") in tasks]

        wait_for(lambda: bool(found()), timeout, f"{wanted} of {task_id}", self._seen)
        return found()[0]

    def _seen(self) -> str:
        return "\n".join(
            f"{e['type']} {e.get('uuid')} {e.get('exception', '')}" for e in self.received
        )

    def _pinged(self, dispatcher: Any) -> bool:
        dispatcher.send("ping-harness")
        time.sleep(0.1)
        return any(event["type"] == "ping-harness" for event in self.received)

    def _capture(self) -> None:
        with self._app.connection() as connection:
            self._receiver = self._app.events.Receiver(
                connection, handlers={"*": self.received.append}
            )
            self._receiver.capture(limit=None, timeout=None, wakeup=False)
