"""How a single-part frame leaves the origin: streamed, redirected, or handed to nginx.

* ``stream`` — the origin forwards the bytes (works for every client; the default).
* ``redirect`` — 307 to a presigned URL on the *public* S3 endpoint. The signing
  time is bucketed (``presign_window_seconds``), so the URL is identical within a
  window and a CDN can cache both the redirect and its target; the redirect itself
  is cacheable only until the window ends.
* ``accel`` — the origin authorises, then answers with ``X-Accel-Redirect`` to
  ``{accel_location}{bucket}/{key}?{signature}``: an nginx ``internal`` location
  that proxies it to the *internal* S3 endpoint (``proxy_pass http://<s3>/;`` with
  ``proxy_set_header Host <s3 host:port>``, the host the URL is signed for) and
  caches by object path (``$uri``, without the query).

A redirect's target carries the stored single-part Content-Type, so only requests
whose negotiated representation is single-part and for one frame are redirected;
multipart answers (and every frame list) always stream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.responses import Response

from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import Presigner


class Delivery:
    """The configured delivery mode, with the presigner it needs."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.delivery
        self.window = settings.presign_window_seconds
        self.accel_location = "/" + settings.accel_location.strip("/") + "/"
        self._public: Presigner | None = None
        self._internal: Presigner | None = None
        if self.mode == "redirect":
            self._public = Presigner.public(settings)
        elif self.mode == "accel":
            self._internal = Presigner.internal(settings)

    def _seconds_left_in_window(self, now: float) -> int:
        return max(1, self.window - int(now) % self.window)

    def redirect(
        self, key: str, headers: Mapping[str, str], *, now: float | None = None
    ) -> Response:
        """307 to the public presigned URL of ``key``."""
        assert self._public is not None
        now = time.time() if now is None else now
        url = self._public.url(key, now=now)
        out = {k: v for k, v in headers.items() if k.lower() in ("vary",)}
        out["Location"] = url
        out["Cache-Control"] = f"public, max-age={self._seconds_left_in_window(now)}"
        return Response(status_code=307, headers=out)

    def accel(self, key: str, headers: Mapping[str, str], *, now: float | None = None) -> Response:
        """200 with X-Accel-Redirect; nginx fetches the bytes and keeps our headers."""
        assert self._internal is not None
        parts = urlsplit(self._internal.url(key, now=now))
        target = f"{self.accel_location.rstrip('/')}{parts.path}?{parts.query}"
        out = dict(headers)
        out.pop("Content-Length", None)
        out["X-Accel-Redirect"] = target
        out["X-Accel-Buffering"] = "yes"
        return Response(status_code=200, headers=out)
