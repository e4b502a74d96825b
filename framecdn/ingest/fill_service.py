"""The fill service's HTTP face: how origins hand it the instances to fill.

A small threaded HTTP server (standard library; it takes a few requests a second, on a
private network or loopback, and answers at once):

* ``POST /fills`` with ``{"instances": [[study, series, sop], ...], "prefix": "..."}``
  (the fill protocol, :mod:`framecdn.framestore.fill_protocol`, shared with the origin)
  queues them (under ``prefix``, which must be the service's own ``FRAMECDN_PREFIX`` or
  below it; absent: its own) and answers ``202 {"queued": n, "duplicates": n, "refused":
  n}``;
* ``GET /fills``: what is queued or running, and the totals (JSON);
* ``GET /healthz``; ``GET /metrics`` (Prometheus: ``framecdn_fills{result=...}`` ...).

Fills run in the service's own threads (:class:`~framecdn.ingest.fill.Filler`), never in
an origin process, so a fill competes with the origin's event loop for nothing but CPU
(and the service lowers its own priority, ``FRAMECDN_FILL_NICE``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framecdn.errors import Refusal
from framecdn.framestore.fill_protocol import (
    ACCEPTED,
    FILLS_PATH,
    MAX_REQUEST_BYTES,
    FillRequest,
)
from framecdn.ingest.fill import Filler

log = logging.getLogger("framecdn.fill")


class _Handler(BaseHTTPRequestHandler):
    server: FillServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode() + b"\n")

    def do_GET(self) -> None:
        filler = self.server.filler
        if self.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif self.path == "/metrics":
            self._send(200, generate_latest(filler.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == FILLS_PATH:
            self._json(200, filler.status())
        else:
            self._json(404, {"status": 404, "error": "not found"})

    def do_POST(self) -> None:
        if self.path != FILLS_PATH:
            self._json(404, {"status": 404, "error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"status": 411, "error": "Content-Length required"})
            return
        if not 0 < length <= MAX_REQUEST_BYTES:
            self.close_connection = True
            self._json(413, {"status": 413, "error": f"body must be 1..{MAX_REQUEST_BYTES} bytes"})
            return
        try:
            request = FillRequest.from_json(self.rfile.read(length))
            done = self.server.filler.submit(list(request.instances), request.prefix)
        except Refusal as exc:  # InvalidFillRequest, or a prefix the filler refuses
            self._json(exc.status, {"status": exc.status, "error": str(exc)})
            return
        self._json(ACCEPTED, {
            "queued": done.queued, "duplicates": done.duplicates, "refused": done.refused,
        })


class FillServer(ThreadingHTTPServer):
    """The HTTP server in front of one :class:`Filler`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], filler: Filler) -> None:
        self.filler = filler
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"


@contextmanager
def running_fill_service(filler: Filler, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The service on ``host:port`` (0: a free port) in a thread; yields its URL."""
    server = FillServer((host, port), filler)
    thread = threading.Thread(target=server.serve_forever, name="fill-http", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
