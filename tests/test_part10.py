"""The part10 object format and stitching, without a store (#20 item 2)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from framecdn.errors import FramecdnError
from framecdn.framestore.part10 import (
    MAGIC,
    FrameRange,
    InvalidPart10,
    Literal,
    Part10,
    Part10Mismatch,
    stitch,
)

FRAMES = {1: b"ABCDEFGH", 2: b"0123456789"}
PART10 = Part10(
    2,
    (
        Literal(b"HEAD"),
        FrameRange(1, 0, 3),
        Literal(b"|"),
        FrameRange(1, 3, 5),
        FrameRange(2, 0, 10),
        Literal(b"TAIL"),
    ),
)
EXPECTED = b"HEADABC|DEFGH0123456789TAIL"


async def _read_bytes(number: int, offset: int, length: int) -> bytes:
    return FRAMES[number][offset : offset + length]


def _read_streaming(number: int, offset: int, length: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        data = FRAMES[number][offset : offset + length]
        for start in range(0, len(data), 2):
            yield data[start : start + 2]

    return chunks()


def _stitched(remainder, read_frame) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in stitch(remainder, read_frame)])

    return asyncio.run(collect())


def test_round_trip_and_total_length() -> None:
    raw = PART10.to_bytes()
    assert raw.startswith(MAGIC)
    parsed = Part10.from_bytes(raw)
    assert parsed == PART10
    assert parsed.total_length == len(EXPECTED)
    parsed.check_frames([8, 10])


@pytest.mark.parametrize("reader", [_read_bytes, _read_streaming], ids=["bytes", "stream"])
def test_stitch_yields_the_file(reader) -> None:
    assert _stitched(PART10.to_bytes(), reader) == EXPECTED
    assert _stitched(PART10, reader) == EXPECTED


def test_a_dropped_segment_changes_the_bytes() -> None:
    dropped = Part10(2, PART10.segments[:1] + PART10.segments[2:])
    assert _stitched(dropped, _read_bytes) != EXPECTED


@pytest.mark.parametrize("reader", [_read_bytes, _read_streaming], ids=["bytes", "stream"])
def test_a_short_frame_cuts_the_answer(reader) -> None:
    def short(number: int, offset: int, length: int):
        return reader(number, offset, length - 1 if number == 2 else length)

    seen = bytearray()

    async def collect() -> None:
        async for chunk in stitch(PART10, short):
            seen.extend(chunk)

    with pytest.raises(Part10Mismatch):
        asyncio.run(collect())
    assert len(seen) < len(EXPECTED)


def _corruptions(raw: bytes) -> dict[str, bytes]:
    flipped = bytearray(raw)
    flipped[30] ^= 1
    return {
        "empty": b"",
        "truncated": raw[:-1],
        "flipped byte": bytes(flipped),
        "bad magic": b"X" + raw[1:],
        "extra bytes": raw + b"\x00",
    }


@pytest.mark.parametrize("name", list(_corruptions(PART10.to_bytes())))
def test_a_corrupt_object_is_refused(name) -> None:
    raw = _corruptions(PART10.to_bytes())[name]
    with pytest.raises(InvalidPart10) as caught:
        Part10.from_bytes(raw)
    assert isinstance(caught.value, FramecdnError)
    with pytest.raises(InvalidPart10):
        _stitched(raw, _read_bytes)


def _resigned(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_structurally_wrong_objects_with_a_valid_checksum_are_refused() -> None:
    body = PART10.to_bytes()[:-32]
    version = bytearray(body)
    version[8] = 9
    total = bytearray(body)
    total[20] ^= 1  # the u64 total length
    frame = Part10(1, (FrameRange(2, 0, 1),))  # names a frame beyond the count
    for raw, message in (
        (_resigned(bytes(version)), "version"),
        (_resigned(bytes(total)), "add up"),
        (frame.to_bytes(), "frame 2 of 1"),
        (_resigned(body[:-3]), "truncated|past the end"),
    ):
        with pytest.raises(InvalidPart10, match=message):
            Part10.from_bytes(raw)


def test_ranges_beyond_the_stored_frames_are_refused() -> None:
    with pytest.raises(InvalidPart10, match="frame 2"):
        PART10.check_frames([8, 9])
    with pytest.raises(InvalidPart10, match="index lists 3"):
        PART10.check_frames([8, 10, 1])
