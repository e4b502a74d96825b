"""Short JSON error answers, and the mapping of S3 trouble to 503/504 + Retry-After."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from framecdn.origin.storage import S3Error

RETRY_AFTER_SECONDS = 5


def error_response(
    status: int, reason: str, *, headers: Mapping[str, str] | None = None, **extra: object
) -> JSONResponse:
    body: dict[str, object] = {"status": status, "error": reason}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def s3_error_response(exc: S3Error) -> JSONResponse:
    """503 (unreachable) / 504 (too slow) / 502 (odd answer), all with Retry-After."""
    return error_response(
        exc.status_code,
        f"storage {exc.kind}: {exc}",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
    )
