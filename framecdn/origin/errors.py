"""Short JSON error answers, and S3 trouble as 502/503/504 that reveal nothing inside.

A client's own mistake (400, 404, 406, 416) is explained to it: an endpoint raises a
:class:`~framecdn.errors.Refusal` carrying its status, and :func:`refusal_response`
(the app's one handler for them) answers it. A failure on our side
(5xx) is not: the client gets a generic reason and a request id, in the body and in
``X-Request-Id``; the log line with the same id carries the details (the S3
endpoint, what S3 answered, the exception). Internal hosts and S3 XML never leave.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from framecdn.errors import Refusal
from framecdn.origin.storage import S3Error

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

log = logging.getLogger("framecdn.origin")

REQUEST_ID_HEADER = "X-Request-Id"


def request_id(scope: Scope) -> str:
    """This request's id (made on first use; the metrics middleware logs it too)."""
    labels: dict[str, str] = scope.setdefault("framecdn", {})
    if "request_id" not in labels:
        labels["request_id"] = secrets.token_hex(8)
    return labels["request_id"]


def error_response(
    status: int, reason: str, *, headers: Mapping[str, str] | None = None, **extra: object
) -> JSONResponse:
    """A 4xx answer whose reason describes the client's request (safe to show)."""
    body: dict[str, object] = {"status": status, "error": reason}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


async def refusal_response(request: Request, exc: Exception) -> Response:
    """The one answer to a :class:`~framecdn.errors.Refusal` an endpoint lets go up: its
    ``status``, its message (about the caller's own request), headers and details."""
    if not isinstance(exc, Refusal):
        raise exc
    return error_response(exc.status, str(exc), headers=exc.headers, **exc.details)


def server_error_response(
    request: Request,
    status: int,
    reason: str,
    detail: str,
    *,
    retry_after: int | None = None,
) -> JSONResponse:
    """A 5xx answer: ``reason`` (generic) for the client, ``detail`` for the log only."""
    rid = request_id(request.scope)
    log.error(
        "request %s: %s %s answered %d: %s", rid, request.method, request.url.path, status, detail
    )
    headers = {REQUEST_ID_HEADER: rid, "Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = {"status": status, "error": reason, "request_id": rid}
    return JSONResponse(body, status_code=status, headers=headers)


def s3_error_response(request: Request, exc: S3Error) -> JSONResponse:
    """503 (unreachable) / 504 (too slow) / 502 (odd answer), all with Retry-After."""
    origin: Origin = request.app.state.origin
    origin.metrics.s3_errors.labels(exc.kind).inc()
    return server_error_response(
        request,
        exc.status,
        f"storage {exc.kind}",
        str(exc),
        retry_after=origin.settings.retry_after_seconds,
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Starlette's handler for anything uncaught: a bare 500 with a request id."""
    return server_error_response(request, 500, "internal error", repr(exc))
