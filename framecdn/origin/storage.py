"""Async reads from S3: one shared httpx client per process, requests signed locally.

Object GETs use presigned URLs on the *internal* endpoint (local HMAC, cached per
key for the signing window), so a frame read is one plain HTTP GET whose body we
forward chunk by chunk; no thread per frame, no SDK in the data path. Listing and
the readiness probe use SigV4 header signing through the same client.

Failures are mapped to what the origin answers: connection trouble -> 503
(:class:`S3Unavailable`), timeouts -> 504 (:class:`S3Timeout`), a missing object ->
:class:`ObjectMissing`.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import Presigner, resolve_credentials
from framecdn.origin.rawhttp import (
    RawConnectError,
    RawHTTPError,
    RawPool,
    RawResponse,
    RawTimeout,
)

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Error(Exception):
    """S3 answered something the origin cannot use (surfaced as 502)."""

    status_code = 502
    kind = "error"


class S3Unavailable(S3Error):
    """S3 could not be reached (connect failure, pool exhausted, 5xx): 503."""

    status_code = 503
    kind = "unavailable"


class S3Timeout(S3Error):
    """S3 did not answer within the configured timeout: 504."""

    status_code = 504
    kind = "timeout"


class ObjectMissing(Exception):
    """The object is not in the bucket (404)."""


def _internal_endpoint(settings: Settings) -> str:
    return settings.s3_endpoint or f"https://s3.{settings.aws_region}.amazonaws.com"


class ObjectStream:
    """An open GET whose body has not been read yet: the bytes stay in the socket."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.content_length = int(response.headers.get("content-length", "-1"))
        self.content_range = response.headers.get("content-range")

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The body in chunks of about ``chunk_size``; raises S3Timeout/S3Unavailable."""
        try:
            async for chunk in self._response.aiter_raw(chunk_size):
                yield chunk
        except httpx.TimeoutException as exc:
            raise S3Timeout(f"S3 read timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise S3Unavailable(f"S3 read failed: {exc}") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class RawObjectStream:
    """:class:`ObjectStream` over the lean frame client (plain-http endpoints)."""

    def __init__(self, response: RawResponse) -> None:
        self._response = response
        self.status_code = response.status_code
        self.content_length = response.content_length
        self.content_range = response.headers.get("content-range")

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.chunks(chunk_size):
                yield chunk
        except RawTimeout as exc:
            raise S3Timeout(str(exc)) from exc
        except RawHTTPError as exc:
            raise S3Unavailable(str(exc)) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class ObjectStore:
    """The origin's S3 access: GET (whole or streamed), list, and a readiness probe."""

    def __init__(self, settings: Settings, *, url_cache_size: int = 65536) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint = _internal_endpoint(settings).rstrip("/")
        credentials = resolve_credentials(settings)
        self._credentials = credentials
        # Internal URLs only need to stay valid for one request; a short window keeps
        # the per-key URL cache small while still saving the HMAC on hot frames.
        self._presigner = Presigner(
            self.endpoint, settings.bucket, credentials, settings.aws_region, window_seconds=300
        )
        self._urls: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._url_cache_size = url_cache_size
        timeout = httpx.Timeout(
            connect=settings.s3_connect_timeout,
            read=settings.s3_read_timeout,
            write=settings.s3_read_timeout,
            pool=settings.s3_connect_timeout,
        )
        limits = httpx.Limits(
            max_connections=settings.s3_max_connections,
            max_keepalive_connections=settings.s3_max_connections,
            keepalive_expiry=30.0,
        )
        # Frame bodies go through the lean client when S3 speaks plain http (the usual
        # in-cluster / embedded setup); https endpoints use httpx.
        self._raw: RawPool | None = None
        if self.endpoint.startswith("http://"):
            self._raw = RawPool(
                self.endpoint,
                settings.s3_max_connections,
                settings.s3_connect_timeout,
                settings.s3_read_timeout,
            )
        self.client = httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            transport=httpx.AsyncHTTPTransport(limits=limits, retries=1),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        if self._raw is not None:
            self._raw.close()
        await self.client.aclose()

    @property
    def active_streams(self) -> int:
        """S3 connections currently busy with a frame body (for tests and metrics)."""
        if self._raw is not None:
            return self._raw.in_use
        pool = self.client._transport._pool  # type: ignore[attr-defined]
        return sum(1 for c in pool.connections if not c.is_idle() and not c.is_closed())

    # URLs ----------------------------------------------------------------
    def url(self, key: str) -> str:
        """A presigned internal GET URL for ``key``, reused within its signing window."""
        window = int(time.time()) // self._presigner.window_seconds
        cached = self._urls.get(key)
        if cached is not None and cached[0] == window:
            self._urls.move_to_end(key)
            return cached[1]
        url = self._presigner.url(key)
        self._urls[key] = (window, url)
        if len(self._urls) > self._url_cache_size:
            self._urls.popitem(last=False)
        return url

    def _signed_headers(self, method: str, url: str) -> dict[str, str]:
        request = AWSRequest(method=method, url=url)
        S3SigV4Auth(self._credentials, "s3", self.settings.aws_region).add_auth(request)
        return dict(request.headers.items())

    # Requests --------------------------------------------------------------
    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            return await self.client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.PoolTimeout | httpx.ConnectTimeout):
                raise S3Unavailable(f"S3 not reachable: {exc!r}") from exc
            raise S3Timeout(f"S3 timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise S3Unavailable(f"S3 not reachable: {exc!r}") from exc

    @staticmethod
    async def _check(response: httpx.Response, key: str) -> None:
        if response.status_code in (200, 206):
            return
        await response.aread()
        await response.aclose()
        if response.status_code == 404:
            raise ObjectMissing(key)
        if response.status_code == 416:
            raise ObjectMissing(f"{key}: range not satisfiable (object shorter than indexed)")
        if response.status_code >= 500:
            raise S3Unavailable(f"S3 answered {response.status_code} for {key}")
        raise S3Error(f"S3 answered {response.status_code} for {key}: {response.text[:200]}")

    async def get_bytes(self, key: str) -> bytes:
        """The whole (small) object; raises ObjectMissing when absent."""
        response = await self._send(self.client.build_request("GET", self.url(key)), stream=True)
        await self._check(response, key)
        try:
            return await response.aread()
        except httpx.TimeoutException as exc:
            raise S3Timeout(f"S3 read timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise S3Unavailable(f"S3 read failed: {exc!r}") from exc
        finally:
            await response.aclose()

    async def open(
        self, key: str, *, byte_range: tuple[int, int] | None = None
    ) -> ObjectStream | RawObjectStream:
        """Start a GET and return once the headers are in; the body is read on demand."""
        headers = {"Accept-Encoding": "identity"}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        if self._raw is not None:
            return await self._open_raw(key, headers)
        request = self.client.build_request("GET", self.url(key), headers=headers)
        response = await self._send(request, stream=True)
        await self._check(response, key)
        return ObjectStream(response)

    async def _open_raw(self, key: str, headers: dict[str, str]) -> RawObjectStream:
        assert self._raw is not None
        parts = urlsplit(self.url(key))
        try:
            response = await self._raw.get(f"{parts.path}?{parts.query}", headers)
        except RawTimeout as exc:
            raise S3Timeout(str(exc)) from exc
        except (RawConnectError, RawHTTPError) as exc:
            raise S3Unavailable(str(exc)) from exc
        if response.status_code in (200, 206):
            return RawObjectStream(response)
        try:
            text = (await response.read())[:200].decode(errors="replace")
        except RawHTTPError:
            text = ""
        finally:
            await response.aclose()
        if response.status_code in (404, 416):
            raise ObjectMissing(key)
        if response.status_code >= 500:
            raise S3Unavailable(f"S3 answered {response.status_code} for {key}")
        raise S3Error(f"S3 answered {response.status_code} for {key}: {text}")

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, paginated)."""
        keys: list[str] = []
        token: str | None = None
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if token:
                query = f"continuation-token={quote(token, safe='')}&{query}"
            url = f"{self.endpoint}/{self.bucket}?{query}"
            request = self.client.build_request(
                "GET", url, headers=self._signed_headers("GET", url)
            )
            response = await self._send(request, stream=False)
            if response.status_code != 200:
                if response.status_code >= 500:
                    raise S3Unavailable(f"S3 list answered {response.status_code}")
                raise S3Error(f"S3 list answered {response.status_code}: {response.text[:200]}")
            root = ET.fromstring(response.content)
            keys.extend(el.text or "" for el in root.iter(f"{_S3_NS}Key"))
            truncated = root.findtext(f"{_S3_NS}IsTruncated") == "true"
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if not truncated or not token:
                return keys

    async def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        """PUT a small object (the origin only writes access markers)."""
        url = f"{self.endpoint}/{self.bucket}/{quote(key, safe='/~')}"
        request_headers = {"Content-Type": content_type}
        signing = AWSRequest(method="PUT", url=url, data=body, headers=request_headers)
        S3SigV4Auth(self._credentials, "s3", self.settings.aws_region).add_auth(signing)
        request = self.client.build_request(
            "PUT", url, content=body, headers=dict(signing.headers.items())
        )
        response = await self._send(request, stream=False)
        if response.status_code != 200:
            raise S3Error(f"S3 PUT {key} answered {response.status_code}: {response.text[:200]}")

    async def ping(self) -> None:
        """HEAD the bucket: raises unless S3 answers and the bucket exists."""
        url = f"{self.endpoint}/{self.bucket}"
        request = self.client.build_request("HEAD", url, headers=self._signed_headers("HEAD", url))
        response = await self._send(request, stream=False)
        if response.status_code != 200:
            raise S3Unavailable(f"bucket {self.bucket}: S3 answered {response.status_code}")
