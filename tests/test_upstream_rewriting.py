"""Upstream answers rewritten as they stream: pure functions of framecdn.origin.rewriting and
the path check of framecdn.origin.upstream, fed every way a body can be cut into chunks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from framecdn.origin.rewriting import (
    BadUpstreamBody,
    JsonArrayReader,
    UrlRewriter,
    replace_bytes,
    rewrite_json_array,
    rewrite_multipart,
)
from framecdn.origin.upstream import InvalidPath, checked_path

UPSTREAM = "http://pacs.internal:8042/dicom-web"
ORIGIN = "https://frames.example.org/dicom-web/"
REWRITER = UrlRewriter(UPSTREAM, ORIGIN)


async def chunks_of(body: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        yield body[at : at + size]
        at += size
    if at < len(body):
        yield body[at:]


def collect(make: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]], body: bytes,
            sizes: list[int]) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in make(chunks_of(body, sizes))])

    return asyncio.run(run())


def splits(length: int) -> list[list[int]]:
    """One cut at every position, plus one-byte and seven-byte chunks."""
    return [[n] for n in range(length + 1)] + [[1] * length, [7] * (length // 7 + 1)]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{UPSTREAM}/studies/1.2", f"{ORIGIN}studies/1.2"),
        ("http://PACS.internal:8042/dicom-web/studies/1.2?x=1", f"{ORIGIN}studies/1.2?x=1"),
        ("http://other.name/dicom-web/studies/1.2/series/3", f"{ORIGIN}studies/1.2/series/3"),
        ("http://other.name/dicom-web/system", "http://other.name/dicom-web/system"),
        ("http://pacs.internal:8042/other/studies/1", "http://pacs.internal:8042/other/studies/1"),
        ("studies/1.2/series/3", "studies/1.2/series/3"),  # relative: resolves here already
        ("urn:oid:1.2.3", "urn:oid:1.2.3"),
    ],
)
def test_urls_of_the_upstream_point_here(url: str, expected: str) -> None:
    assert REWRITER.url(url) == expected


def test_default_ports_are_the_same_site() -> None:
    rewriter = UrlRewriter("http://pacs/dicom-web", ORIGIN)
    assert rewriter.url("http://pacs:80/dicom-web/studies/1") == f"{ORIGIN}studies/1"


ENTRIES = [
    {"0020000D": {"vr": "UI", "Value": ["1.2"]},
     "00081190": {"vr": "UR", "Value": [f"{UPSTREAM}/studies/1.2"]},
     "00100010": {"vr": "PN", "Value": [{"Alphabetic": "ROE^MARY \u00e9"}]}},
    {"0020000D": {"vr": "UI", "Value": ["9.9"]},
     "7FE00010": {"vr": "OW", "BulkDataURI": f"{UPSTREAM}/studies/9.9/bulk/7fe00010"},
     "00400275": {"vr": "SQ", "Value": [
         {"00081190": {"vr": "UR", "Value": [f"{UPSTREAM}/studies/9.9/series/1"]}}]}},
]


def test_json_arrays_are_rewritten_element_by_element_at_every_split() -> None:
    body = json.dumps(ENTRIES, indent=2, ensure_ascii=False).encode()
    for sizes in splits(len(body)):
        out = json.loads(collect(lambda c: rewrite_json_array(c, REWRITER), body, sizes))
        assert out[0]["00081190"]["Value"] == [f"{ORIGIN}studies/1.2"]
        assert out[0]["00100010"]["Value"][0]["Alphabetic"] == "ROE^MARY \u00e9"
        assert out[1]["7FE00010"]["BulkDataURI"] == f"{ORIGIN}studies/9.9/bulk/7fe00010"
        nested = out[1]["00400275"]["Value"][0]["00081190"]["Value"]
        assert nested == [f"{ORIGIN}studies/9.9/series/1"]
        assert UPSTREAM.encode() not in json.dumps(out).encode()


def test_json_entries_can_be_dropped() -> None:
    body = json.dumps(ENTRIES).encode()
    keep = lambda e: e["0020000D"]["Value"] == ["9.9"]  # noqa: E731
    out = json.loads(collect(lambda c: rewrite_json_array(c, REWRITER, keep), body, [10]))
    assert [e["0020000D"]["Value"] for e in out] == [["9.9"]]
    assert collect(lambda c: rewrite_json_array(c, REWRITER, lambda _: False), body, []) == b"[]"
    assert collect(lambda c: rewrite_json_array(c, REWRITER), b" [ ] ", [2]) == b"[]"


@pytest.mark.parametrize("body", [b'[{"a": 1}', b'[{"a": 1},', b'{"a": 1}', b'[{"a": 1}] x',
                                  b'[{"a": 1} {"b": 2}]', b""])
def test_json_that_is_cut_or_not_an_array_raises(body: bytes) -> None:
    with pytest.raises(BadUpstreamBody):
        collect(lambda c: rewrite_json_array(c, REWRITER), body, [3])


def test_a_big_element_is_parsed_a_bounded_number_of_times() -> None:
    reader = JsonArrayReader()
    element = json.dumps({"x": "y" * 200_000}).encode()
    body = b"[" + element + b"]"
    found = []
    for at in range(0, len(body), 1000):
        found += reader.feed(body[at : at + 1000])
    found += reader.feed(b"", final=True)
    assert found == [json.loads(element)]


BOUNDARY = "b0und"


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for headers, payload in parts:
        out += b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n" + payload + b"\r\n"
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


def test_multipart_part_headers_are_rewritten_and_payloads_pass_untouched() -> None:
    tricky = b"\r\n--b0un Content-Location: " + UPSTREAM.encode() + b"\r\n\r\n" * 3
    body = multipart([
        (f"Content-Type: application/octet-stream\r\nContent-Location: {UPSTREAM}/studies/1/"
         "frames/1\r\n".encode(), tricky),
        (f"content-location:{UPSTREAM}/studies/1/frames/2\r\n".encode(), b"\x00" * 40),
    ])
    expected = body.replace(
        f"Content-Location: {UPSTREAM}/studies/1/frames/1".encode(),
        f"Content-Location: {ORIGIN}studies/1/frames/1".encode(),
    ).replace(
        f"content-location:{UPSTREAM}/studies/1/frames/2".encode(),
        f"content-location:{ORIGIN}studies/1/frames/2".encode(),
    )
    for sizes in splits(len(body)):
        assert collect(lambda c: rewrite_multipart(c, BOUNDARY, REWRITER), body, sizes) == (
            expected
        ), sizes


def test_a_multipart_body_without_its_closing_delimiter_raises() -> None:
    body = multipart([(b"Content-Type: application/dicom\r\n", b"x" * 100)])
    for cut in (0, 20, 80, len(body) - 8):
        with pytest.raises(BadUpstreamBody):
            collect(lambda c: rewrite_multipart(c, BOUNDARY, REWRITER), body[:cut], [5])


def test_replace_bytes_across_every_split() -> None:
    old, new = UPSTREAM.encode(), ORIGIN.rstrip("/").encode()
    body = b"<a href='" + old + b"/studies/1'/>" + old + old + b"tail" + old[:10]
    for sizes in splits(len(body)):
        assert collect(lambda c: replace_bytes(c, old, new), body, sizes) == body.replace(
            old, new
        ), sizes


@pytest.mark.parametrize("path", ["studies", "studies/1.2/series/3.4/instances/5/frames/1,2",
                                  "studies/1.2/rendered", "studies/%31.2"])
def test_paths_below_the_root_pass(path: str) -> None:
    assert checked_path(path) == path


@pytest.mark.parametrize("path", ["studies/../system", "%2e%2e/system", "studies/./x",
                                  "studies//x", "studies/a%2Fb", "studies/a%5Cb", "",
                                  "studies/%2E"])
def test_paths_that_could_leave_the_root_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        checked_path(path)
