"""CORS for browser viewers (OHIF's quoted Accept forces a preflight).

Any OPTIONS is answered 204 with the CORS headers, without credentials (browsers send
none on a preflight; a preflight must never fail on an unlisted request header: the
viewer would show nothing); other responses get ``Access-Control-Allow-Origin`` and
the exposed headers (``WWW-Authenticate`` and ``Retry-After`` too, so a viewer can tell
an expired token from a missing study).

``*`` is never sent together with ``Access-Control-Allow-Credentials``: with auth on the
settings refuse ``*`` at start (``FRAMECDN_CORS_ORIGINS`` must list the viewers), and a
listed origin is echoed back with ``Access-Control-Allow-Credentials: true`` (for viewers
whose requests go out in credentials mode; framecdn's credential is the Authorization
header or the query token, never a cookie).
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "GET, HEAD, OPTIONS"
ALLOW_HEADERS = ("Authorization", "Accept", "Range", "If-None-Match", "If-Range")
EXPOSE_HEADERS = (
    "Content-Range, Content-Location, Content-Length, ETag, Content-Type, X-Request-Id, "
    "WWW-Authenticate, Retry-After"
)
MAX_AGE = "86400"


class CORSMiddleware:
    def __init__(self, app: ASGIApp, origins: tuple[str, ...], credentials: bool = False) -> None:
        self.app = app
        self.any_origin = "*" in origins or not origins
        self.origins = frozenset(origins)
        #: Allow credentials mode: only ever with an echoed, listed origin.
        self.credentials = credentials and not self.any_origin

    def _allow_origin(self, origin: str | None) -> str | None:
        if self.any_origin:
            return "*"
        if origin is not None and origin in self.origins:
            return origin
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)
        allow = self._allow_origin(request_headers.get("origin"))
        if scope["method"] == "OPTIONS":
            requested = request_headers.get("access-control-request-headers", "")
            names = list(ALLOW_HEADERS)
            for name in requested.split(","):
                name = name.strip()
                if name and name.lower() not in {n.lower() for n in names}:
                    names.append(name)
            headers = [
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ", ".join(names).encode("latin-1")),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
                (b"access-control-max-age", MAX_AGE.encode()),
                (b"allow", ALLOW_METHODS.encode()),
                (b"content-length", b"0"),
            ]
            if allow is not None:
                headers.append((b"access-control-allow-origin", allow.encode("latin-1")))
                if self.credentials:
                    headers.append((b"access-control-allow-credentials", b"true"))
            if not self.any_origin:
                headers.append((b"vary", b"Origin"))
            scope.setdefault("framecdn", {}).update(route="options")
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if allow is not None:
                    headers["Access-Control-Allow-Origin"] = allow
                    headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                    if self.credentials:
                        headers["Access-Control-Allow-Credentials"] = "true"
                if not self.any_origin:
                    headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, cors_send)
