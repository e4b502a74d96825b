"""Async reads from S3: one shared aiohttp session per process, requests signed locally.

Object GETs use presigned URLs on the *internal* endpoint (local HMAC, cached per
key for the signing window), so a frame read is one plain HTTP GET whose body we
forward chunk by chunk; no thread per frame, no SDK in the data path. Listing, the
readiness probe and the access-marker PUT use SigV4 header signing (botocore).

aiohttp rather than httpx: its C-accelerated HTTP parser moves frame bodies with
about a third of httpx's CPU per byte (measured here: 0.3 s/GB vs 0.9-1.3 s/GB),
which is what limits an origin that shares its cores with the store.

The read timeout is ours, not aiohttp's ``sock_read``: aiohttp 3.14 (3.14.0 to at
least 3.14.5) can leave the ``sock_read`` timer armed on a connection it has put
back into the pool. When a body was paused for backpressure and the pause ends by
parsing the end of the message, ``ResponseHandler.resume_reading()`` re-arms the
timer *after* the end-of-body callbacks cancelled it and released the connection;
``read_timeout`` seconds later the idle pooled connection is stamped with a
``SocketTimeoutError`` and the next request on it fails at once with a 504 (see
aio-libs/aiohttp#12953, whose fix covers only part of this path). So ``sock_read``
stays off, and :class:`ReadDeadline` bounds each wait for S3 data instead: from the
request's headers being sent to the response's headers, then each body read that has
to wait. Pooling is unchanged. tests/test_origin_idle.py reproduces the fault.

Failures are mapped to what the origin answers: connection trouble -> 503
(:class:`S3Unavailable`), timeouts -> 504 (:class:`S3Timeout`), a missing object ->
:class:`~framecdn.errors.ObjectMissing`. Their messages carry the endpoint and what
S3 said: they are for the log, never for a client (see ``origin/errors.py``).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from yarl import URL

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import Presigner

__all__ = ["ObjectMissing", "ObjectStore", "ObjectStream", "S3Error", "S3Timeout", "S3Unavailable"]

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: aiohttp's per-response buffer; it pauses the socket at twice this (backpressure).
READ_BUFFER_BYTES = 1 << 20
T = TypeVar("T")


class S3Error(StoreError):
    """S3 answered something the origin cannot use (surfaced as 502)."""

    status = 502
    kind = "error"


class S3Unavailable(S3Error):
    """S3 could not be reached (connect failure, pool exhausted, 5xx): 503."""

    status = 503
    kind = "unavailable"


class S3Timeout(S3Error):
    """S3 did not answer within the configured timeout: 504."""

    status = 504
    kind = "timeout"


def _translate(exc: BaseException, what: str) -> S3Error:
    """The origin's view of an aiohttp failure."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return S3Unavailable(f"S3 not reachable ({what}): {exc!r}")
    if isinstance(exc, TimeoutError):  # ours (ReadDeadline) or aiohttp's
        return S3Timeout(f"S3 timed out ({what}): {exc!r}")
    return S3Unavailable(f"S3 failed ({what}): {exc!r}")


class ReadDeadline:
    """How long one request may wait for S3's answer (asyncio.timeout, rescheduled).

    It starts bounded by connect + read timeout, and once the request's headers are
    out (aiohttp's ``on_request_headers_sent`` trace signal) S3 gets exactly
    ``read_timeout`` to answer. Connecting is bounded by aiohttp's own connect timeout.
    """

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.read_timeout = read_timeout
        loop = asyncio.get_running_loop()
        self.timeout = asyncio.timeout_at(loop.time() + connect_timeout + read_timeout)

    def request_sent(self) -> None:
        self.timeout.reschedule(asyncio.get_running_loop().time() + self.read_timeout)

    @staticmethod
    def trace_config() -> aiohttp.TraceConfig:
        """The session hook that calls :meth:`request_sent` of the request's deadline."""

        async def headers_sent(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: object
        ) -> None:
            if isinstance(context.trace_request_ctx, ReadDeadline):
                context.trace_request_ctx.request_sent()

        config = aiohttp.TraceConfig()
        config.on_request_headers_sent.append(headers_sent)
        return config


class ObjectStream:
    """An open GET whose body has not been read yet: the bytes stay in the socket."""

    def __init__(
        self, response: aiohttp.ClientResponse, read_timeout: float, on_close: Callable[[], None]
    ) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self._on_close: Callable[[], None] | None = on_close
        self.status_code = response.status
        self.content_length = int(response.headers.get("Content-Length", "-1"))
        self.content_range = response.headers.get("Content-Range")

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The body in chunks of at most ``chunk_size``; raises S3Timeout/S3Unavailable.

        What is already buffered is taken without a timer; a read that has to wait
        gets ``read_timeout``. A body that ends before Content-Length raises, so a
        truncated object can never pass for a complete frame.
        """
        content = self._response.content
        try:
            while True:
                chunk = content.read_nowait(chunk_size)
                if not chunk:
                    if content.at_eof():
                        return
                    async with asyncio.timeout(self._read_timeout):
                        chunk = await content.read(chunk_size)
                    if not chunk:
                        return
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, f"reading {self._response.url.path}") from exc

    async def aclose(self) -> None:
        """Release the connection (closed, not reused, if the body was not read)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        if not self._response.content.at_eof():
            self._response.close()
        self._response.release()


class ObjectStore:
    """The origin's S3 access: GET (whole or streamed), list, PUT, and a readiness probe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint = settings.internal_endpoint
        # Internal URLs only need to stay valid for one request; a short window keeps
        # the per-key URL cache small while still saving the HMAC on hot frames.
        self._presigner = Presigner.internal(settings, settings.internal_presign_seconds)
        keys = self._presigner.credentials
        self._header_credentials = ReadOnlyCredentials(keys.access_key, keys.secret_key, keys.token)
        self._urls: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._url_cache_size = settings.url_cache_entries
        self._session: aiohttp.ClientSession | None = None
        self._open_streams = 0

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use inside the running event loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.settings.s3_max_connections,
                keepalive_timeout=self.settings.s3_keepalive_seconds,
                ttl_dns_cache=300,
            )
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.s3_connect_timeout,  # includes waiting for a free slot
                sock_connect=self.settings.s3_connect_timeout,
                sock_read=None,  # see the module docstring: ReadDeadline does this
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                read_bufsize=READ_BUFFER_BYTES,
                skip_auto_headers=("User-Agent",),
                trace_configs=[ReadDeadline.trace_config()],
            )
        return self._session

    def _deadline(self) -> ReadDeadline:
        return ReadDeadline(self.settings.s3_connect_timeout, self.settings.s3_read_timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def active_streams(self) -> int:
        """Frame bodies currently open on S3 connections (for tests and metrics)."""
        return self._open_streams

    def _stream_closed(self) -> None:
        self._open_streams -= 1

    # URLs ----------------------------------------------------------------
    def url(self, key: str) -> str:
        """A presigned internal GET URL for ``key``, reused within its signing window."""
        now = time.time()
        window = self._presigner.window(now)
        cached = self._urls.get(key)
        if cached is not None and cached[0] == window:
            self._urls.move_to_end(key)
            return cached[1]
        url = self._presigner.url(key, now=now)
        self._urls[key] = (window, url)
        if len(self._urls) > self._url_cache_size:
            self._urls.popitem(last=False)
        return url

    def _signed_headers(
        self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        S3SigV4Auth(self._header_credentials, "s3", self.settings.aws_region).add_auth(request)
        return dict(request.headers.items())

    # Requests --------------------------------------------------------------
    async def _request(
        self,
        method: str,
        url: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> T:
        """One whole request: send, let ``read`` consume the response, release it."""
        deadline = self._deadline()
        try:
            async with (
                deadline.timeout,
                self._client().request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    trace_request_ctx=deadline,
                ) as response,
            ):
                return await read(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, f"{method} {url.split('?')[0]}") from exc

    @staticmethod
    async def _check(response: aiohttp.ClientResponse, key: str) -> None:
        if response.status in (200, 206):
            return
        text = (await response.read())[:300].decode(errors="replace")  # keeps the connection
        if response.status in (404, 416):  # 416: the object is shorter than the index says
            raise ObjectMissing(key)
        what = f"GET {response.url.with_query(None)} answered {response.status}: {text}"
        if response.status >= 500:
            raise S3Unavailable(what)
        raise S3Error(what)

    async def get_bytes(self, key: str) -> bytes:
        """The whole (small) object; raises ObjectMissing when absent."""

        async def read(response: aiohttp.ClientResponse) -> bytes:
            await self._check(response, key)
            return await response.read()

        return await self._request("GET", self.url(key), read)

    async def open(self, key: str, *, byte_range: tuple[int, int] | None = None) -> ObjectStream:
        """Start a GET and return once the headers are in; the body is read on demand."""
        headers = {"Accept-Encoding": "identity"}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        deadline = self._deadline()
        try:
            async with deadline.timeout:
                response = await self._client().get(
                    URL(self.url(key), encoded=True), headers=headers, trace_request_ctx=deadline
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, f"GET {self.endpoint}/{self.bucket}/{key}") from exc
        try:
            await self._check(response, key)
        except BaseException:
            response.release()
            raise
        self._open_streams += 1
        return ObjectStream(response, self.settings.s3_read_timeout, self._stream_closed)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, paginated)."""
        return await self._list(prefix, "Key")

    async def any_key(self, prefix: str) -> bool:
        """Whether anything is stored under ``prefix`` (one key asked for, not a listing)."""
        return bool(await self._list(prefix, "Key", max_keys=1))

    async def list_prefixes(self, prefix: str) -> list[str]:
        """The "folders" right under ``prefix`` (delimiter ``/``): one entry per study, say,
        however many objects each holds."""
        return await self._list(prefix, "Prefix", delimiter="/")

    async def _list(
        self, prefix: str, element: str, *, delimiter: str | None = None,
        max_keys: int | None = None,
    ) -> list[str]:
        keys: list[str] = []
        token: str | None = None

        async def read(response: aiohttp.ClientResponse) -> bytes:
            body = await response.read()
            if response.status != 200:
                text = body[:300].decode(errors="replace")
                what = f"LIST {self.endpoint}/{self.bucket} {prefix!r} answered {response.status}"
                if response.status >= 500:
                    raise S3Unavailable(f"{what}: {text}")
                raise S3Error(f"{what}: {text}")
            return body

        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if delimiter:
                query = f"delimiter={quote(delimiter, safe='')}&{query}"
            if token:
                query = f"continuation-token={quote(token, safe='')}&{query}"
            if max_keys is not None:
                query = f"{query}&max-keys={max_keys}"
            url = f"{self.endpoint}/{self.bucket}?{query}"
            root = ET.fromstring(
                await self._request("GET", url, read, headers=self._signed_headers("GET", url))
            )
            if element == "Key":
                found = root.iter(f"{_S3_NS}Key")
            else:
                found = root.iterfind(f"{_S3_NS}CommonPrefixes/{_S3_NS}Prefix")
            keys.extend(el.text or "" for el in found)
            if max_keys is not None:  # one page of at most that many: no more asked
                return keys[:max_keys]
            truncated = root.findtext(f"{_S3_NS}IsTruncated") == "true"
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if not truncated or not token:
                return keys

    async def put_bytes(
        self, key: str, body: bytes, content_type: str, *, tagging: str | None = None
    ) -> None:
        """PUT a small object (the origin writes access markers and rendered images);
        ``tagging`` is the URL-encoded object tag set (``x-amz-tagging``)."""
        url = f"{self.endpoint}/{self.bucket}/{quote(key, safe='/~')}"
        unsigned = {"Content-Type": content_type}
        if tagging is not None:
            unsigned["x-amz-tagging"] = tagging
        headers = self._signed_headers("PUT", url, body, unsigned)

        async def read(response: aiohttp.ClientResponse) -> None:
            text = (await response.read())[:300].decode(errors="replace")
            if response.status != 200:
                raise S3Error(f"PUT {url} answered {response.status}: {text}")

        await self._request("PUT", url, read, headers=headers, body=body)

    async def ping(self) -> None:
        """HEAD the bucket: raises unless S3 answers and the bucket exists."""
        url = f"{self.endpoint}/{self.bucket}"

        async def read(response: aiohttp.ClientResponse) -> None:
            if response.status != 200:
                raise S3Unavailable(f"HEAD {url}: S3 answered {response.status}")

        await self._request("HEAD", url, read, headers=self._signed_headers("HEAD", url))
