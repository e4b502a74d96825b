"""Prometheus metrics and structured access logs, from one pure ASGI middleware.

Handlers label their request by writing ``route`` and ``mode`` into
``scope["framecdn"]``; the middleware counts status, bytes sent and the time until
the last byte (so a streamed frame is timed to its end, not to its headers), and
gives each request the id that error answers and the access log carry.
Metrics are per process (with several workers, scrape each or use a collector).

The access log is also the audit trail: one JSON line per answered request with the
time, the caller (``site``, ``subject``, ``auth``: how it proved it), the ``study``, the
``decision`` (``allowed`` / ``denied`` and a ``reason``), the status and the bytes sent.
It never holds a credential: the path is logged without its query (the access
middleware has removed ``access_token`` from it before anyone could read it anyway),
and no header is logged. "Who read study S, and when"::

    jq -c 'select(.study=="S" and .decision=="allowed" and .status<300)
           | {time, site, subject, path, status, bytes}' access.log
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framecdn.origin.errors import request_id

access_log = logging.getLogger("framecdn.access")

_STUDY_IN_PATH = re.compile(r"/studies/([^/]+)")
#: Audit fields the access middleware may set (absent: "-").
_AUDIT_FIELDS = ("site", "subject", "auth", "decision", "reason")

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The origin's counters, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "framecdn_requests", "HTTP requests answered", ["route", "mode", "status"], registry=r
        )
        self.bytes = Counter(
            "framecdn_response_bytes", "Response body bytes sent", ["route", "mode"], registry=r
        )
        self.latency = Histogram(
            "framecdn_request_seconds",
            "Time from request to last byte",
            ["route", "mode"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.s3_errors = Counter(
            "framecdn_s3_errors", "S3 failures by kind", ["kind"], registry=r
        )
        self.lookups = Counter(
            "framecdn_instance_lookups",
            "Instance lookups: hit = served from the bucket, miss = absent",
            ["result"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "framecdn_upstream_requests",
            "Requests sent to the upstream DICOMweb server, by route and its status (or "
            "unavailable/timeout)",
            ["route", "status"],
            registry=r,
        )
        self.fill_requests = Counter(
            "framecdn_fill_requests",
            "Instances the origin asked the fill service for: queued, failed (service not "
            "reached), dropped (too many requests in flight)",
            ["result"],
            registry=r,
        )
        self.index_cache = Counter(
            "framecdn_index_cache", "Index cache lookups", ["result"], registry=r
        )
        self.renditions = Counter(
            "framecdn_renditions",
            "Rendered images and thumbnails answered, by where they came from: rendered now, "
            "read from the bucket, or from memory",
            ["source"],
            registry=r,
        )
        self.render_seconds = Histogram(
            "framecdn_render_seconds",
            "Time one rendering took in its worker process (decode to encoded image)",
            buckets=_BUCKETS,
            registry=r,
        )
        self.aborted_streams = Counter(
            "framecdn_aborted_streams",
            "Streams cut because a frame object was missing or short mid-body",
            registry=r,
        )

    def render(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def label(scope: Scope, **values: str) -> None:
    """Set the metric labels (``route``, ``mode``) of the current request."""
    scope.setdefault("framecdn", {}).update(values)


def _content_length(message: Message) -> int | None:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-length":
            return int(value)
    return None


class MetricsMiddleware:
    """Counts and times every HTTP request; writes one JSON access-log line per request.

    A request is counted just *before* its last byte is handed to the server (the
    message completing Content-Length, or the final one), so a client that has read
    a whole response and then asks ``/metrics`` always finds that response counted.
    Requests that end without a last body message (an error, a client gone
    mid-stream) are counted when the app returns.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id(scope)
        state: dict[str, Any] = {"status": 500, "bytes": 0, "complete": False, "done": False}

        def finish() -> None:
            if not state["done"]:
                state["done"] = True
                self._record(scope, state, time.perf_counter() - started)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["length"] = _content_length(message)
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
                length = state.get("length")
                if not message.get("more_body", False) or (
                    length is not None and state["bytes"] >= length
                ):
                    state["complete"] = True
                    finish()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            finish()

    def _record(self, scope: Scope, state: dict[str, Any], elapsed: float) -> None:
        labels = scope.get("framecdn", {})
        route = labels.get("route", "other")
        mode = labels.get("mode", "-")
        self.metrics.requests.labels(route, mode, str(state["status"])).inc()
        self.metrics.bytes.labels(route, mode).inc(state["bytes"])
        self.metrics.latency.labels(route, mode).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps(_log_line(scope, state, elapsed), separators=(",", ":")))


def _log_line(scope: Scope, state: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The access-log (and audit) record of one answered request."""
    labels = scope.get("framecdn", {})
    client = scope.get("client") or ("-", 0)
    path = labels.get("path", scope["path"])  # the authorize call logs the request it judged
    study = _STUDY_IN_PATH.search(path)
    line: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": client[0],
        "method": scope["method"],
        "path": path,
        "study": unquote(study[1]) if study else None,
        "status": state["status"],
        "bytes": state["bytes"],
        "complete": state["complete"],
        "ms": round(elapsed * 1000, 2),
        "route": labels.get("route", "other"),
        "mode": labels.get("mode", "-"),
        "request_id": labels.get("request_id"),
    }
    line.update({name: labels.get(name, "-") for name in _AUDIT_FIELDS})
    if "edge_request_id" in labels:
        line["edge_request_id"] = labels["edge_request_id"]
    return line
