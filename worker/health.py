"""``/healthz`` for the node worker's liveness probe, on ``WARM_HEALTH_PORT`` (0: not served).

Healthy means this process serves and its runtime answers on its socket. A failed pull is the
registry's or the image's problem, and restarting the worker would not fix it, so no pull
outcome ever makes the probe fail: a broken registry must not turn into a crash-looping
DaemonSet.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .runtime import ImageRuntime, RuntimeUnavailable

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 5.0


def check(runtime: ImageRuntime) -> tuple[bool, str]:
    try:
        return True, f"ok: {runtime.version(timeout=_PROBE_TIMEOUT)}"
    except RuntimeUnavailable as error:
        return False, f"runtime unavailable: {error}"


def serve(port: int, runtime: ImageRuntime) -> ThreadingHTTPServer | None:
    """Serve /healthz in a daemon thread; a port already taken is logged, not fatal."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/healthz":
                self.send_error(404)
                return
            healthy, text = check(runtime)
            body = (text + "\n").encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would drown the worker's log."""

    try:
        server = ThreadingHTTPServer(("", port), Handler)
    except OSError as error:
        log.warning("health endpoint not served on port %d: %s", port, error)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server
