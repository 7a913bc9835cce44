"""``/healthz``: fails when the watcher stops watching, instead of staying green.

The failure users hit with naive watchers is a watch that ends or hangs while the process
lives on. So health is not "the process answers" but "every reflector thread is alive and has
heard from the API within ``WARM_WATCH_STALE_AFTER`` seconds (events, bookmarks and list pages
all count), and the main loop is turning". Kubernetes restarts a pod whose probe fails.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    def __init__(self, port: int, check: Check, host: str = "") -> None:
        handler = _handler(check)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(check: Check) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/healthz", "/readyz"):
                self.send_error(404)
                return
            healthy, details = check()
            body = json.dumps({"healthy": healthy, **details}, sort_keys=True).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler
