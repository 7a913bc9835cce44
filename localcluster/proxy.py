"""A counting HTTP proxy in front of a registry: how many blob downloads run at once.

On loopback a registry serves a layer in milliseconds, so its own log shows no overlap whatever
the client does. This proxy forwards every request to the registry and holds each blob download
open for ``blob_delay`` seconds first, as a distant registry would, and counts the downloads in
flight, so the peak that a cap on concurrent pulls promises is observed at the registry's door.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from localcluster._lifecycle import Service

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class CountingProxy(Service):
    """Serves 127.0.0.1:<free port>, forwarding to ``upstream`` ("host:port")."""

    def __init__(self, upstream: str, *, blob_delay: float = 1.0) -> None:
        self.upstream = upstream
        self.blob_delay = blob_delay
        self.blob_downloads = 0  # blob GETs served
        self.peak_blob_downloads = 0  # the most in flight at one moment
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return f"127.0.0.1:{self._server.server_address[1]}"

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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        blob = request.command == "GET" and "/blobs/" in request.path
        if blob:
            with self._lock:
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
            body = response.read()
            request.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    request.send_header(key, value)
            length = response.getheader("Content-Length")
            request.send_header("Content-Length", length or str(len(body)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(body)
        finally:
            upstream.close()
