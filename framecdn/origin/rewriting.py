"""Upstream answers made to point at this origin, streamed.

The upstream writes its own absolute URLs into what it answers: RetrieveURL (0008,1190)
and BulkDataURI in DICOM JSON, ``Content-Location`` in headers and in the part headers
of multipart bodies. A viewer following them would leave framecdn, so each is rewritten
to the same path under this origin's root (:class:`UrlRewriter`). Bodies are rewritten
as they stream, never held whole:

* DICOM JSON arrays (QIDO answers, metadata) one element at a time
  (:func:`rewrite_json_array`), which is also where search results for studies out of
  the request's scope are dropped;
* multipart bodies only in their part headers; the parts' bytes pass untouched
  (:func:`rewrite_multipart`);
* other text (XML) by replacing the upstream root (:func:`replace_bytes`).

Binary bodies (frames as a single part, rendered images, bulk data) are passed as they are.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from framecdn.errors import FramecdnError
from framecdn.origin.qido_query import STUDY_UID

#: A part's header block longer than this is not a DICOMweb part header.
MAX_PART_HEADERS = 64 * 1024
_HEADER_LOCATION = re.compile(rb"^(content-location[ \t]*:[ \t]*)([^\r\n]*)", re.I | re.M)


class BadUpstreamBody(FramecdnError):
    """An upstream body that is not what its Content-Type says (the stream is cut)."""


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _site(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (
        parts.scheme.lower(),
        (parts.hostname or "").lower(),
        parts.port or _default_port(parts.scheme.lower()),
    )


class UrlRewriter:
    """Maps the upstream's URLs to this origin's: same path below the DICOMweb root."""

    def __init__(self, upstream_root: str, origin_root: str) -> None:
        self.upstream_root = upstream_root.rstrip("/") + "/"
        self.origin_root = origin_root.rstrip("/") + "/"
        self._site = _site(self.upstream_root)
        self._root_path = urlsplit(self.upstream_root).path or "/"

    def url(self, value: str) -> str:
        """``value`` pointing at this origin if it points at the upstream's DICOMweb root.

        Matched by scheme, host and port (default ports made explicit) and the root's
        path; a URL of another host that carries the root's path followed by ``studies/``
        (the upstream announcing itself under another name) is mapped too.
        """
        if not value.startswith(("http://", "https://", "HTTP://", "HTTPS://")):
            return value
        try:
            parts = urlsplit(value)
            site = _site(value)
        except ValueError:
            return value
        path = parts.path
        if path.startswith(self._root_path):
            rest = path[len(self._root_path):]
            if site == self._site or rest.startswith("studies/"):
                query = f"?{parts.query}" if parts.query else ""
                return f"{self.origin_root}{rest}{query}"
        return value

    def element(self, element: Any) -> Any:
        """A DICOM JSON element with its URLs rewritten (sequences item by item)."""
        if not isinstance(element, dict):
            return element
        out = dict(element)
        uri = out.get("BulkDataURI")
        if isinstance(uri, str):
            out["BulkDataURI"] = self.url(uri)
        values = out.get("Value")
        if isinstance(values, list):
            out["Value"] = [self._value(v) for v in values]
        return out

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.url(value)
        if isinstance(value, dict):
            return self.dataset(value)
        return value

    def dataset(self, dataset: dict[str, Any]) -> dict[str, Any]:
        """A DICOM JSON object (an instance, a search result, a sequence item) rewritten."""
        return {tag: self.element(element) for tag, element in dataset.items()}


def study_of(dataset: Any) -> str | None:
    """The StudyInstanceUID an entry carries, if any."""
    if not isinstance(dataset, dict):
        return None
    element = dataset.get(STUDY_UID)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], str):
            return values[0]
    return None


class JsonArrayReader:
    """Reads the elements of a JSON array as its text arrives, each parsed once.

    A partial element is tried again only once the text waiting has doubled, so a big
    element costs about twice its parse, not one parse per chunk.
    """

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._state = "start"  # start, first, value, comma, end
        self._need = 0  # characters of a partial element to wait for before trying again

    def feed(self, data: bytes, *, final: bool = False) -> list[Any]:
        """The elements completed by ``data``; ``final`` says the text has ended."""
        self._text = self._text[self._pos :] + self._utf8.decode(data, final)
        self._pos = 0
        found: list[Any] = []
        text = self._text
        while True:
            while self._pos < len(text) and text[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos >= len(text):
                break
            char = text[self._pos]
            if self._state == "start":
                if char != "[":
                    raise BadUpstreamBody("a JSON answer that is not an array")
                self._pos += 1
                self._state = "first"
            elif self._state in ("first", "value"):
                if char == "]" and self._state == "first":
                    self._pos += 1
                    self._state = "end"
                    continue
                waiting = len(text) - self._pos
                if not final and waiting < self._need:
                    break
                try:
                    value, end = self._decoder.raw_decode(text, self._pos)
                except json.JSONDecodeError:
                    if final:
                        raise BadUpstreamBody("a JSON answer cut or malformed") from None
                    self._need = 2 * waiting
                    break
                found.append(value)
                self._pos = end
                self._state = "comma"
                self._need = 0
            elif self._state == "comma":
                if char not in ",]":
                    raise BadUpstreamBody("a JSON array with something between its elements")
                self._pos += 1
                self._state = "value" if char == "," else "end"
            else:
                raise BadUpstreamBody("text after the end of a JSON answer")
        if final and self._state != "end":
            raise BadUpstreamBody("a JSON answer that ends before its array does")
        return found


async def rewrite_json_array(
    chunks: AsyncIterator[bytes],
    rewriter: UrlRewriter,
    keep: Callable[[Any], bool] = lambda _: True,
) -> AsyncIterator[bytes]:
    """A DICOM JSON array, element by element: rewritten, and only those ``keep`` takes."""
    reader = JsonArrayReader()
    first = True
    yield b"["

    def encode(elements: list[Any]) -> bytes:
        nonlocal first
        out = []
        for element in elements:
            if not keep(element):
                continue
            value = rewriter.dataset(element) if isinstance(element, dict) else element
            out.append(("" if first else ",") + json.dumps(value, separators=(",", ":")))
            first = False
        return "".join(out).encode()

    async for chunk in chunks:
        if body := encode(reader.feed(chunk)):
            yield body
    if body := encode(reader.feed(b"", final=True)):
        yield body
    yield b"]"


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


async def rewrite_multipart(
    chunks: AsyncIterator[bytes], boundary: str, rewriter: UrlRewriter
) -> AsyncIterator[bytes]:
    """A multipart body with every part header's Content-Location rewritten; the parts'
    payloads pass through as they came (only a delimiter's length is held back)."""
    delimiter = b"--" + boundary.encode("latin-1")
    held = b""
    state = "preamble"  # preamble/body: looking for a delimiter; headers: in a header block
    search_from = 0

    def rewrite_headers(block: bytes) -> bytes:
        return _HEADER_LOCATION.sub(
            lambda m: m.group(1)
            + rewriter.url(m.group(2).decode("latin-1").strip()).encode("latin-1"),
            block,
        )

    async for chunk in chunks:
        held += chunk
        while True:
            if state in ("preamble", "body"):
                marker = delimiter if state == "preamble" else b"\r\n" + delimiter
                at = held.find(marker, search_from)
                if at < 0:
                    keep = max(len(held) - len(marker) + 1, 0)
                    if keep:
                        yield held[:keep]
                        held = held[keep:]
                    search_from = 0
                    break
                after = at + len(marker)
                if len(held) < after + 2:
                    search_from = at  # wait for the two bytes after the delimiter
                    break
                if held[after : after + 2] == b"--":
                    yield held  # the closing delimiter and whatever follows it
                    held = b""
                    state = "closed"
                    break
                yield held[:after]
                held = held[after:]
                search_from = 0
                state = "headers"
            elif state == "headers":
                end = held.find(b"\r\n\r\n")
                if end < 0:
                    if len(held) > MAX_PART_HEADERS:
                        raise BadUpstreamBody("a multipart part header that does not end")
                    break
                yield rewrite_headers(held[: end + 4])
                held = held[end + 4 :]
                state = "body"
            else:  # closed: pass the epilogue
                if held:
                    yield held
                    held = b""
                break
    if state != "closed":
        raise BadUpstreamBody("a multipart answer that ends before its closing delimiter")


async def replace_bytes(
    chunks: AsyncIterator[bytes], old: bytes, new: bytes
) -> AsyncIterator[bytes]:
    """Every occurrence of ``old`` replaced by ``new``, across chunk boundaries."""
    held = b""
    tail = len(old) - 1  # bytes that may be the start of an occurrence
    async for chunk in chunks:
        held += chunk
        out: list[bytes] = []
        start = 0
        while (at := held.find(old, start)) >= 0:
            out += [held[start:at], new]
            start = at + len(old)
        rest = held[start:]
        if len(rest) > tail:
            out.append(rest[: len(rest) - tail])
            rest = rest[len(rest) - tail :]
        held = rest
        if out:
            yield b"".join(out)
    if held:
        yield held
