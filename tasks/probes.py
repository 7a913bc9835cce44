"""``/healthz`` and ``/metrics`` for the long-running components (watcher and node worker).

Each component decides what healthy means (the watcher: its watches are fresh; the worker: its
runtime answers); this module only serves the answer. A port that is already taken costs the
probe or the metrics, never the component: two workers on one machine (the local cluster) or a
misconfigured port must not stop pulls.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from prometheus_client import start_http_server

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, dict[str, Any]]]


class BackgroundServer:
    """A threaded HTTP server on its own daemon thread: the component's work never waits on
    a slow client, and the process exits without shutting it down."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], port: int, host: str, name: str
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HealthServer(BackgroundServer):
    """Answers ``/healthz`` (and ``/readyz``) with 200 or 503 and the check's details as JSON."""

    def __init__(self, port: int, check: Check, host: str = "") -> None:
        super().__init__(_handler(check), port, host, "health")


def serve_health(port: int, check: Check) -> HealthServer | None:
    """Serve the probe on ``port`` (0: not served); a port already taken is logged, not fatal."""
    if not port:
        return None
    try:
        return HealthServer(port, check).start()
    except OSError as error:
        log.warning("health endpoint not served on port %d: %s", port, error)
        return None


def serve_metrics(port: int) -> None:
    """Serve Prometheus ``/metrics`` on ``port`` (0: not served), never failing the caller."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as error:
        log.warning("metrics not served on port %d: %s", port, error)


def _handler(check: Check) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/healthz", "/readyz"):
                self.send_error(404)
                return
            healthy, details = check()
            send_json(self, 200 if healthy else 503, {"healthy": healthy, **details})

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would drown the component's log."""

    return Handler


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    """Answer the request ``handler`` serves with ``payload`` as a JSON document."""
    body = json.dumps(payload, sort_keys=True).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
