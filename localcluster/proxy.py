"""A counting HTTP proxy in front of a registry: what reaches the registry's door, and when.

On loopback a registry serves a layer in milliseconds, so its own log shows no overlap whatever
the client does. This proxy forwards every request to the registry and holds each blob download
open for ``blob_delay`` seconds first, as a distant registry would, and counts the downloads in
flight, so the peak that a cap on concurrent pulls promises is observed at the registry's door.
``bandwidth`` (bytes per second, shared by every download at once) paces what it relays, as a
registry's egress does: a fleet pulling at once then waits on the registry, not on loopback.

Every request is counted by method, kind (``manifests``, ``blobs`` or ``other``), repository
and User-Agent, so a benchmark can tell the watcher's manifest lookups from the nodes' pulls,
and one node's attempts at an image from another's. Bodies are streamed, never held whole.
"""

from __future__ import annotations

import http.client
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from localcluster._lifecycle import Service

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_CHUNK = 256 * 1024
_API_PATH = re.compile(r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs)/[^/?]+")


class Request(NamedTuple):
    """What a request was, as the proxy counts it."""

    method: str  # GET, HEAD
    kind: str  # manifests, blobs, other
    repository: str  # "" for other
    agent: str  # the client's User-Agent


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a fleet connects at once

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class CountingProxy(Service):
    """Serves 127.0.0.1:<free port>, forwarding to ``upstream`` ("host:port")."""

    def __init__(
        self, upstream: str, *, blob_delay: float = 1.0, bandwidth: float | None = None
    ) -> None:
        self.upstream = upstream
        self.blob_delay = blob_delay
        self.bandwidth = bandwidth  # bytes/s shared by every response body; None: unpaced
        self.blob_downloads = 0  # blob GETs served
        self.peak_blob_downloads = 0  # the most in flight at one moment
        self.requests: Counter[Request] = Counter()
        self._in_flight = 0
        self._free_at = 0.0  # monotonic time at which the shared egress is next free
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return f"127.0.0.1:{self._server.server_address[1]}"

    def manifest_requests(self, method: str | None = None, agent: str = "") -> int:
        """Manifest requests (of ``method``, from User-Agents containing ``agent``)."""
        return sum(
            count
            for request, count in self.requests.items()
            if request.kind == "manifests"
            and method in (None, request.method)
            and agent in request.agent
        )

    def reset(self) -> None:
        """Start counting again (between the sides of a benchmark)."""
        with self._lock:
            self.requests.clear()
            self.blob_downloads = 0
            self.peak_blob_downloads = self._in_flight

    def start(self) -> CountingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the registry logs every request already

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        matched = _API_PATH.match(request.path)
        kind = matched["kind"] if matched else "other"
        counted = Request(
            request.command,
            kind,
            matched["repository"] if matched else "",
            request.headers.get("User-Agent", ""),
        )
        blob = request.command == "GET" and kind == "blobs"
        with self._lock:
            self.requests[counted] += 1
            if blob:
                self._in_flight += 1
                self.blob_downloads += 1
                self.peak_blob_downloads = max(self.peak_blob_downloads, self._in_flight)
        try:
            if blob:
                time.sleep(self.blob_delay)
            self._relay(request)
        finally:
            if blob:
                with self._lock:
                    self._in_flight -= 1

    def _relay(self, request: BaseHTTPRequestHandler) -> None:
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(request.command, request.path, headers=headers)
            response = upstream.getresponse()
            length = response.getheader("Content-Length")
            body = b"" if length is not None else response.read()
            request.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    request.send_header(key, value)
            request.send_header("Content-Length", length or str(len(body)))
            request.end_headers()
            if request.command == "HEAD":
                return
            if body:
                self._send(request, body)
            while chunk := response.read(_CHUNK):
                self._send(request, chunk)
        finally:
            upstream.close()

    def _send(self, request: BaseHTTPRequestHandler, chunk: bytes) -> None:
        if self.bandwidth:
            # The shared egress: each chunk takes its turn on the one link.
            with self._lock:
                start = max(time.monotonic(), self._free_at)
                self._free_at = start + len(chunk) / self.bandwidth
                done = self._free_at
            time.sleep(max(0.0, done - time.monotonic()))
        request.wfile.write(chunk)
