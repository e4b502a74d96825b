"""One instance's Part 10 file from an upstream DICOMweb server (WADO-RS), streamed to disk.

``GET {root}/studies/{S}/series/{Se}/instances/{I}`` with ``Accept: multipart/related;
type="application/dicom"; transfer-syntax=*`` (the file as the PACS stores it, no
transcoding). The answer is a multipart body with one part; its payload is written to
a file chunk by chunk (a 2 GB instance never sits in memory) and counts as complete only
if the part's end was seen: its declared ``Content-Length`` reached (when it has one) and
the delimiter after it read, with the HTTP body itself complete. Anything less raises,
and nothing reaches the bucket.
"""

from __future__ import annotations

import threading
from typing import BinaryIO, Self

import httpx

from framecdn.errors import Cancelled, ConfigError, SourceError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey
from framecdn.framestore.upstream_auth import upstream_authorization
from framecdn.ingest.sources import IncompleteInstance, InstanceGone, describe

__all__ = ["DicomwebSource", "FirstPart", "IncompleteInstance", "InstanceGone"]

ACCEPT_PART10 = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DOWNLOAD_CHUNK = 1 << 20
MAX_PART_HEADERS = 64 * 1024


def _boundary(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


class FirstPart:
    """Writes the payload of a multipart body's first part to ``out``, as bytes arrive."""

    def __init__(self, boundary: str, out: BinaryIO) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.out = out
        self.state = "preamble"  # preamble, headers, body, done
        self.held = b""
        self.length: int | None = None  # the part's Content-Length, if it declared one
        self.written = 0

    def feed(self, data: bytes) -> None:
        if self.state == "done":
            return
        self.held += data
        while self.state != "done":
            if self.state == "preamble":
                at = self.held.find(self.delimiter)
                if at < 0:
                    self.held = self.held[-len(self.delimiter) :]
                    return
                end = self.held.find(b"\r\n", at)
                if end < 0:
                    return
                self.held = self.held[end + 2 :]
                self.state = "headers"
            elif self.state == "headers":
                end = self.held.find(b"\r\n\r\n")
                if end < 0:
                    if self.held.startswith(b"\r\n"):  # a part without headers
                        self.held = self.held[2:]
                        self.state = "body"
                        continue
                    if len(self.held) > MAX_PART_HEADERS:
                        raise IncompleteInstance("a part header that does not end")
                    return
                self._read_headers(self.held[:end])
                self.held = self.held[end + 4 :]
                self.state = "body"
            else:
                if not self._body():
                    return

    def _read_headers(self, block: bytes) -> None:
        for line in block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    self.length = int(value.strip())
                except ValueError:
                    raise IncompleteInstance("a part with an unreadable Content-Length") from None

    def _body(self) -> bool:
        """Write what is certainly payload; True once the part's end was found."""
        closing = b"\r\n" + self.delimiter
        if self.length is not None:
            take = min(self.length - self.written, len(self.held))
            self._write(self.held[:take])
            self.held = self.held[take:]
            if self.written < self.length:
                return False
            if len(self.held) < len(closing):
                return False
            if not self.held.startswith(closing):
                raise IncompleteInstance("a part longer than its Content-Length")
            self.state = "done"
            return True
        at = self.held.find(closing)
        if at < 0:
            keep = len(closing) - 1
            if len(self.held) > keep:
                self._write(self.held[: len(self.held) - keep])
                self.held = self.held[len(self.held) - keep :]
            return False
        self._write(self.held[:at])
        self.held = b""
        self.state = "done"
        return True

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.written += len(data)

    @property
    def complete(self) -> bool:
        return self.state == "done"


class DicomwebSource:
    """The upstream's WADO-RS, for downloading whole instances: a
    :class:`~framecdn.ingest.sources.Source`. Thread-safe."""

    def __init__(self, settings: Settings, *, max_connections: int = 8) -> None:
        if not settings.upstream_url:
            raise ConfigError("no upstream: set FRAMECDN_UPSTREAM_URL")
        self.root = settings.upstream_url.rstrip("/")
        headers = {"Accept-Encoding": "identity", "User-Agent": "framecdn-fill"}
        authorization = upstream_authorization(settings)
        if authorization is not None:
            headers["Authorization"] = authorization
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(
                settings.upstream_read_timeout, connect=settings.upstream_connect_timeout
            ),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def instance_url(self, key: InstanceKey) -> str:
        return f"{self.root}/studies/{key.study}/series/{key.series}/instances/{key.instance}"

    def download(
        self, key: InstanceKey, into: BinaryIO, *, cancelled: threading.Event | None = None
    ) -> int:
        """Write the instance's Part 10 file into ``into``; return its size in bytes."""
        url = self.instance_url(key)
        what = f"upstream instance {key.instance}"
        received = 0
        try:
            with self._http.stream("GET", url, headers={"Accept": ACCEPT_PART10}) as response:
                if response.status_code == 404:
                    raise InstanceGone(f"{what}: the upstream does not have it (404)")
                if response.status_code != 200:
                    raise SourceError(f"{what}: the upstream answered {response.status_code}")
                content_type = response.headers.get("Content-Type", "")
                boundary = _boundary(content_type)
                part = FirstPart(boundary, into) if boundary else None
                for chunk in response.iter_raw(DOWNLOAD_CHUNK):
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled(f"download of {what} stopped")
                    received += len(chunk)
                    if part is not None:
                        part.feed(chunk)
                    else:
                        into.write(chunk)
        except httpx.HTTPError as exc:
            raise IncompleteInstance(
                f"{what}: the upstream {describe(exc)} after {received} bytes"
            ) from exc
        if part is None:
            if not content_type.lower().startswith("application/dicom"):
                raise SourceError(f"{what}: the upstream answered {content_type!r}")
            return received
        if not part.complete:
            raise IncompleteInstance(f"{what}: the answer ended inside the file")
        return part.written
