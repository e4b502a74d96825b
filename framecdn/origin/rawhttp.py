"""A lean HTTP/1.1 GET client for frame bodies: asyncio streams, keep-alive pool.

httpx is convenient but its pure-Python body path (h11 parsing, per-read
bookkeeping) cost the origin about a third of S3's throughput in the bench. Frame
GETs are the simplest HTTP there is — a signed URL, a Content-Length body — so the
data path reads them with :func:`asyncio.open_connection` (uvloop's C transport
fills a large buffer in the background while we write the previous chunk to the
client). Anything unusual (no Content-Length, chunked) is refused, not guessed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

_BUFFER_LIMIT = 1 << 20


class RawHTTPError(Exception):
    """The server could not be reached or spoke something we do not accept."""


class RawTimeout(RawHTTPError):
    """No bytes within the read timeout."""


class RawConnectError(RawHTTPError):
    """The connection could not be opened in time."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class RawResponse:
    """Status and headers are read; the body waits in the socket until iterated."""

    def __init__(
        self,
        pool: RawPool,
        conn: _Connection,
        status: int,
        headers: dict[str, str],
        read_timeout: float,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status_code = status
        self.headers = headers
        self._read_timeout = read_timeout
        if "content-length" not in headers:
            raise RawHTTPError("response without Content-Length")
        self.content_length = int(headers["content-length"])
        self._remaining = self.content_length
        self._reusable = headers.get("connection", "").lower() != "close"

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while self._remaining > 0:
            want = min(chunk_size, self._remaining)
            try:
                chunk = await asyncio.wait_for(
                    conn.reader.readexactly(want), timeout=self._read_timeout
                )
            except TimeoutError as exc:
                await self.aclose()
                raise RawTimeout("S3 body read timed out") from exc
            except asyncio.IncompleteReadError as exc:
                self._remaining -= len(exc.partial)
                await self.aclose()
                if exc.partial:
                    yield exc.partial
                return  # short body: the caller compares sizes
            except OSError as exc:
                await self.aclose()
                raise RawHTTPError(f"S3 body read failed: {exc!r}") from exc
            self._remaining -= len(chunk)
            yield chunk
        await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(_BUFFER_LIMIT)])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._remaining == 0 and self._reusable:
            self._pool.release(conn)
        else:
            conn.close()  # unread body: the connection cannot be reused
            self._pool.forget()


class RawPool:
    """Keep-alive connections to one host, at most ``max_connections`` at a time."""

    def __init__(
        self, endpoint: str, max_connections: int, connect_timeout: float, read_timeout: float
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http":
            raise ValueError("the raw frame client speaks plain http only")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=_BUFFER_LIMIT),
                timeout=self.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            raise RawConnectError(f"cannot connect to {self.netloc}: {exc!r}") from exc
        return _Connection(reader, writer)

    def release(self, conn: _Connection) -> None:
        self._in_use -= 1
        self._slots.release()
        if conn.reader.at_eof() or conn.writer.is_closing():
            conn.close()
        else:
            self._idle.append(conn)

    def forget(self) -> None:
        self._in_use -= 1
        self._slots.release()

    async def get(self, target: str, headers: dict[str, str]) -> RawResponse:
        """GET ``target`` (path + query); returns once the response head is in."""
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise RawConnectError("no free S3 connection in time") from exc
        self._in_use += 1
        try:
            return await self._get(target, headers)
        except BaseException:
            self.forget()
            raise

    async def _get(self, target: str, headers: dict[str, str]) -> RawResponse:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in range(2):
            reused = bool(self._idle)
            conn = self._idle.popleft() if reused else await self._connect()
            try:
                conn.writer.write(request)
                head = await asyncio.wait_for(
                    conn.reader.readuntil(b"\r\n\r\n"), timeout=self.read_timeout
                )
            except TimeoutError as exc:
                conn.close()
                raise RawTimeout("S3 did not answer in time") from exc
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise RawHTTPError(f"S3 closed the connection: {exc!r}") from exc
            try:
                status, parsed = _parse_head(head)
                return RawResponse(self, conn, status, parsed, self.read_timeout)
            except RawHTTPError:
                conn.close()
                raise
        raise RawHTTPError("unreachable")

    def close(self) -> None:
        while self._idle:
            self._idle.popleft().close()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise RawHTTPError(f"bad status line {lines[0]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() not in ("", "identity"):
        raise RawHTTPError("chunked responses are not expected from S3 GETs")
    return status, headers
