"""``/healthz`` (the process answers) and ``/readyz`` (the bucket answers, quickly)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from framecdn.origin.errors import server_error_response
from framecdn.origin.metrics import label
from framecdn.origin.storage import S3Error

if TYPE_CHECKING:
    from framecdn.origin.app import Origin


async def healthz(request: Request) -> Response:
    label(request.scope, route="healthz")
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    label(request.scope, route="readyz")
    origin: Origin = request.app.state.origin
    limit = origin.settings.s3_connect_timeout + 1.0
    try:
        await asyncio.wait_for(origin.store.ping(), timeout=limit)
    except (S3Error, TimeoutError) as exc:
        return server_error_response(
            request,
            503,
            "storage unavailable",
            f"readiness: {exc or 'S3 did not answer in time'}",
            retry_after=origin.settings.retry_after_seconds,
        )
    return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})
