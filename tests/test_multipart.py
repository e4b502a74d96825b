"""The multipart layout: exact length, Cornerstone-parsable, stable boundary.

Plus the frame-list and Range parsers.
"""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from framecdn.origin.framelist import InvalidFrameList, check_in_range, parse_frame_list
from framecdn.origin.multipart import MultipartLayout, Part
from framecdn.origin.ranges import RangeNotSatisfiable, if_range_allows, parse_range

CT = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def _layout(frames: list[bytes], ct: str = CT) -> MultipartLayout:
    parts = [Part(f"http://o/f/{i + 1}", len(f), f"{i:064x}") for i, f in enumerate(frames)]
    return MultipartLayout.build(ct, parts)


def cornerstone_first_part(body: bytes) -> tuple[str, bytes]:
    """Cornerstone's parser: boundary from the first line, first part only, case-sensitive."""
    first_line_end = body.index(b"\r\n")
    boundary = body[:first_line_end]
    header_end = body.index(b"\r\n\r\n")
    header = body[:header_end].decode()
    ct_at = header.index("Content-Type:")
    content_type = header[ct_at + len("Content-Type:") :].split("\r\n", 1)[0].strip()
    start = header_end + 4
    end = body.index(b"\r\n" + boundary, start)
    return content_type, body[start:end]


def test_body_and_length() -> None:
    frames = [b"\x00\x01" * 100, b"abc\r\n--x", b""]
    layout = _layout(frames)
    body = layout.render(frames)
    assert len(body) == layout.content_length
    assert body.startswith(f"--{layout.boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{layout.boundary}--\r\n".encode())
    ct, first = cornerstone_first_part(body)
    assert ct == CT
    assert first == frames[0]


def test_standard_mime_parser_reads_every_part() -> None:
    frames = [bytes(range(256)) * 3, b"\r\n\r\n", b"x" * 7]
    layout = _layout(frames)
    body = layout.render(frames)
    content_type = f'multipart/related; type="application/octet-stream"; boundary={layout.boundary}'
    head = f"Content-Type: {content_type}\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head.encode() + body)
    parts = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == frames
    assert [p["Content-Location"] for p in parts] == ["http://o/f/1", "http://o/f/2", "http://o/f/3"]
    assert all(p.get_content_type() == "application/octet-stream" for p in parts)
    assert all(p.get_param("transfer-syntax") == "1.2.840.10008.1.2.1" for p in parts)


def test_boundary_is_stable_and_content_dependent() -> None:
    frames = [b"a", b"b"]
    assert _layout(frames).boundary == _layout(frames).boundary
    other = MultipartLayout.build(
        CT, [Part("http://o/f/2", 1, "0" * 64), Part("http://o/f/1", 1, "1" * 64)]
    )
    assert other.boundary != _layout(frames).boundary
    jp2 = _layout(frames, "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90")
    assert jp2.boundary != _layout(frames).boundary


def test_empty_layout_refused() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        MultipartLayout.build(CT, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1,)), ("3,1,2", (3, 1, 2)), ("10%2C2", (10, 2)), ("7%2c8", (7, 8))],
)
def test_frame_lists(text: str, expected: tuple[int, ...]) -> None:
    assert parse_frame_list(text, 10) == expected


@pytest.mark.parametrize("text", ["", "0", "1,,2", "1,1", "-1", "a", "1.0", " 1", "1,2,", "+3"])
def test_bad_frame_lists(text: str) -> None:
    with pytest.raises(InvalidFrameList):
        parse_frame_list(text, 10)


def test_frame_list_limits() -> None:
    with pytest.raises(InvalidFrameList, match="at most 3"):
        parse_frame_list("1,2,3,4", 3)
    check_in_range((1, 5), 5)
    with pytest.raises(InvalidFrameList, match="beyond NumberOfFrames"):
        check_in_range((1, 6), 5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=50-5000", (50, 99)),
        ("bytes=0-1,5-6", None),  # several ranges: serve the whole
        ("items=0-1", None),
        ("bytes=5-1", None),
        ("bytes=x-1", None),
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=200-300"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_if_range() -> None:
    assert if_range_allows(None, '"a"')
    assert if_range_allows('"a"', '"a"')
    assert not if_range_allows('"b"', '"a"')
