"""The upstream DICOMweb server (the PACS behind framecdn), as the origin reaches it.

One pooled aiohttp session per process. A request goes to ``FRAMECDN_UPSTREAM_URL`` +
the path below the origin's DICOMweb root + the client's query string, byte for byte:
the query is never parsed into anything, so no value in it can pick another host, and a
path with ``.`` or ``..`` segments (which a server might resolve to outside its
DICOMweb root, e.g. Orthanc's own REST API) is refused before anything is sent.

The upstream gets framecdn's own credentials (``FRAMECDN_UPSTREAM_*``); what the client
sent for itself (``Authorization``, cookies) goes along only with
``FRAMECDN_UPSTREAM_FORWARD_AUTH``. Bodies are read on demand, chunk by chunk, each wait
bounded by the read timeout (aiohttp's ``sock_read`` stays off, as in
:mod:`framecdn.origin.storage`). A body shorter than its ``Content-Length``, or a chunked
one cut before its last chunk, raises here; a body delimited only by the connection's
end (Orthanc streams whole studies that way) is checked by its structure instead (a
multipart body must reach its closing delimiter, a JSON array its ``]``; see
:mod:`framecdn.origin.rewriting`). Failures become :class:`UpstreamError` (502/504),
whose messages name the upstream and are for the log only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from framecdn.errors import Refusal, UpstreamError
from framecdn.framestore.config import Settings
from framecdn.framestore.upstream_auth import upstream_authorization
from framecdn.origin.storage import READ_BUFFER_BYTES, ReadDeadline

#: Request headers of the client that the upstream gets as they are.
PASSED_REQUEST_HEADERS = ("accept", "range", "if-range")
#: ... and the client's own credentials, only when so configured.
CLIENT_CREDENTIALS = ("authorization", "cookie")


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset or cut: 502."""

    kind = "unavailable"


class UpstreamTimeout(UpstreamError):
    """No answer (or no next piece of a body) within the read timeout: 504."""

    status = 504
    kind = "timeout"


class InvalidPath(Refusal, ValueError):
    """A path that must not be sent upstream."""


def checked_path(path: str) -> str:
    """``path`` (below the DICOMweb root, no leading slash) if it is safe to send upstream.

    Segments that are (or decode to) ``.`` or ``..``, empty segments and encoded slashes
    or backslashes are refused: the upstream might resolve them to outside its root.
    """
    for segment in path.split("/"):
        decoded = unquote(segment)
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            raise InvalidPath(f"path segment {segment!r} is not allowed")
    return path


def _translate(exc: BaseException, what: str) -> UpstreamError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"upstream timed out ({what}): {exc!r}")
    return UpstreamUnavailable(f"upstream failed ({what}): {exc!r}")


class UpstreamResponse:
    """An upstream answer whose headers are in and whose body is still in the socket."""

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The body; raises UpstreamError if the upstream stalls or the body ends early."""
        content = self._response.content
        what = f"reading {self._response.url.path}"
        try:
            while True:
                chunk = content.read_nowait(chunk_size)
                if not chunk:
                    if content.at_eof():
                        break
                    async with asyncio.timeout(self._read_timeout):
                        chunk = await content.read(chunk_size)
                    if not chunk:
                        break
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, what) from exc

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing one longer than ``limit`` bytes."""
        body = bytearray()
        async for chunk in self.chunks(READ_BUFFER_BYTES):
            body += chunk
            if len(body) > limit:
                raise UpstreamError(f"upstream answer longer than {limit} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        """Give the connection back (closed unless the body was read to its end)."""
        if not self._response.content.at_eof():
            self._response.close()
        self._response.release()


class Upstream:
    """The upstream DICOMweb root: sends requests, hands back open answers."""

    def __init__(self, settings: Settings) -> None:
        assert settings.upstream_url is not None
        self.settings = settings
        #: Ends with ``/``: a path below the root is appended as it is.
        self.root = settings.upstream_url.rstrip("/") + "/"
        self.authorization = upstream_authorization(settings)  # ConfigError at start
        self.forward_auth = settings.upstream_forward_auth
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.root!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            settings = self.settings
            connector = aiohttp.TCPConnector(
                limit=settings.upstream_max_connections,
                # Some PACS close idle connections within a second (Orthanc: 1 s); a
                # reused connection the server just closed is retried once below.
                keepalive_timeout=5,
                ttl_dns_cache=300,
            )
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=settings.upstream_connect_timeout,
                sock_connect=settings.upstream_connect_timeout,
                sock_read=None,  # ReadDeadline and UpstreamResponse.chunks bound the reads
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                read_bufsize=READ_BUFFER_BYTES,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trace_configs=[ReadDeadline.trace_config()],
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers_for(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """What the upstream is sent: a few of the client's headers and our credentials."""
        headers = {"Accept-Encoding": "identity", "User-Agent": "framecdn"}
        for name in PASSED_REQUEST_HEADERS:
            value = client_headers.get(name)
            if value is not None:
                headers[name.title()] = value
        if self.forward_auth:
            for name in CLIENT_CREDENTIALS:
                value = client_headers.get(name)
                if value is not None:
                    headers[name.title()] = value
        elif self.authorization is not None:
            headers["Authorization"] = self.authorization
        return headers

    def url(self, path: str, query: str = "") -> URL:
        """The upstream URL of ``path`` (checked) with ``query`` appended as it is."""
        text = self.root + checked_path(path)
        if query:
            text += "?" + query
        return URL(text, encoded=True)

    async def open(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """Send the request; return once the answer's headers are in."""
        url = self.url(path, query)
        what = f"{method} {url.with_query(None)}"
        for attempt in (1, 2):
            deadline = ReadDeadline(
                self.settings.upstream_connect_timeout, self.settings.upstream_read_timeout
            )
            try:
                async with deadline.timeout:
                    response = await self._client().request(
                        method,
                        url,
                        headers=dict(headers),
                        allow_redirects=False,
                        trace_request_ctx=deadline,
                    )
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 1:
                    continue  # a pooled connection the server had just closed
                raise _translate(exc, what) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _translate(exc, what) from exc
            return UpstreamResponse(response, self.settings.upstream_read_timeout)
        raise AssertionError("unreachable")
