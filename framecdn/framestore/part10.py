"""The ``part10`` object of a generation: what rebuilds the ingested file byte for byte.

The frame objects hold the pixel bytes and ``metadata`` holds DICOM JSON; neither keeps
the preamble, the file meta as written, the encoding of every other element, the Pixel
Data element header, the encapsulated item layout (item tags and lengths, the Basic
Offset Table, fragment boundaries) or what follows Pixel Data. This object keeps exactly
that, as a list of *segments* whose concatenation is the original file (#20 item 2):

- a **literal**: bytes of the file kept here (headers, item tags, trailing elements);
- a **frame range**: ``length`` bytes of frame object ``number`` from ``offset`` (one
  fragment of a multi-fragment frame is one range of its frame object).

Format version 1, all integers little endian::

    magic     8 bytes  b"FCDNP10\\n"
    version   u16      1
    reserved  u16      0
    frames    u32      frames of the instance (every range names 1..frames)
    segments  u32      number of segments that follow
    total     u64      length of the rebuilt file (the Content-Length)
    segment*  u8 kind, then
              kind 1 (literal): u32 length, that many bytes
              kind 2 (frame):   u32 number, u64 offset, u64 length
    checksum  32 bytes SHA-256 of everything before it

Any deviation (magic, version, counts, lengths, checksum, bytes left over) raises
:class:`InvalidPart10`: a damaged object is refused, never stitched into wrong bytes.
Ingest writes it before ``index.json``; the index names it (``extra["part10"]``: size
and SHA-256), so it is committed with the frames it refers to. Ingest writes none for a
deflated source (its frames are stored inflated: retrieval builds a file in the stored
syntax), a native source whose stored frames are not the file's bytes (big endian, or
1-bit frames not on byte boundaries), or a file whose literal bytes exceed
:data:`MAX_LITERAL_BYTES` (an odd huge non-pixel element).

This module is pure: no S3, no HTTP. :func:`stitch` yields the file given a callable
that reads a frame object's range.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from framecdn.errors import FramecdnError

__all__ = [
    "FORMAT_VERSION",
    "MAX_LITERAL_BYTES",
    "MAX_SEGMENTS",
    "FrameRange",
    "InvalidPart10",
    "Literal",
    "Part10",
    "Part10Mismatch",
    "ReadFrame",
    "Segment",
    "stitch",
]

MAGIC = b"FCDNP10\n"
FORMAT_VERSION = 1
#: Literal bytes one object may hold; a file with more gets no part10 object.
MAX_LITERAL_BYTES = 8 << 20
#: Segments one object may hold (about two per fragment).
MAX_SEGMENTS = 1 << 23
_HEADER = struct.Struct("<8sHHLLQ")
_KIND = struct.Struct("<B")
_LITERAL = struct.Struct("<L")
_FRAME = struct.Struct("<LQQ")
_LITERAL_KIND, _FRAME_KIND = 1, 2
_DIGEST = 32


class InvalidPart10(FramecdnError, ValueError):
    """A part10 object that does not follow the format: never stitch it."""


class Part10Mismatch(FramecdnError):
    """A frame object that does not hold what the part10 object says (short, long, absent)."""


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes of the original file kept in the part10 object."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class FrameRange:
    """``length`` bytes of 1-based frame object ``number``, from byte ``offset``."""

    number: int
    offset: int
    length: int


Segment = Literal | FrameRange
#: Reads ``length`` bytes of frame ``number`` from ``offset``: awaits to the bytes, or
#: streams them (an async iterable of chunks).
ReadFrame = Callable[[int, int, int], Awaitable[bytes] | AsyncIterable[bytes]]


@dataclass(frozen=True, slots=True)
class Part10:
    """A parsed (or built) part10 object: the segments of the original file, in order."""

    number_of_frames: int
    segments: tuple[Segment, ...]

    @property
    def total_length(self) -> int:
        """Length of the rebuilt file: the Content-Length of a byte-exact retrieve."""
        return sum(segment.length for segment in self.segments)

    def frame_extents(self) -> dict[int, int]:
        """For each frame referred to, the end of the furthest range read from it."""
        extents: dict[int, int] = {}
        for segment in self.segments:
            if isinstance(segment, FrameRange):
                end = segment.offset + segment.length
                extents[segment.number] = max(extents.get(segment.number, 0), end)
        return extents

    def check_frames(self, sizes: Sequence[int]) -> None:
        """Refuse an object whose ranges do not fit the stored frames (sizes from the index)."""
        if len(sizes) != self.number_of_frames:
            raise InvalidPart10(
                f"part10 object is for {self.number_of_frames} frames, the index lists {len(sizes)}"
            )
        for number, end in self.frame_extents().items():
            if end > sizes[number - 1]:
                raise InvalidPart10(
                    f"part10 object reads frame {number} up to byte {end}, the frame holds "
                    f"{sizes[number - 1]}"
                )

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                0,
                self.number_of_frames,
                len(self.segments),
                self.total_length,
            )
        ]
        for segment in self.segments:
            if isinstance(segment, Literal):
                parts += [_KIND.pack(_LITERAL_KIND), _LITERAL.pack(segment.length), segment.data]
            else:
                parts += [
                    _KIND.pack(_FRAME_KIND),
                    _FRAME.pack(segment.number, segment.offset, segment.length),
                ]
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Part10:
        """Parse and check a part10 object; :class:`InvalidPart10` for anything wrong."""
        if len(raw) < _HEADER.size + _DIGEST:
            raise InvalidPart10(f"part10 object is too short ({len(raw)} bytes)")
        body, digest = raw[:-_DIGEST], raw[-_DIGEST:]
        magic, version, reserved, frames, count, total = _HEADER.unpack_from(body)
        if magic != MAGIC:
            raise InvalidPart10("not a part10 object (bad magic)")
        if version != FORMAT_VERSION:
            raise InvalidPart10(f"unknown part10 format version {version}")
        if hashlib.sha256(body).digest() != digest:
            raise InvalidPart10("part10 object is corrupt (checksum mismatch)")
        if reserved or count > MAX_SEGMENTS:
            raise InvalidPart10("part10 object header is invalid")
        segments: list[Segment] = []
        position = _HEADER.size
        try:
            for _ in range(count):
                (kind,) = _KIND.unpack_from(body, position)
                position += _KIND.size
                if kind == _LITERAL_KIND:
                    (length,) = _LITERAL.unpack_from(body, position)
                    position += _LITERAL.size
                    if position + length > len(body):
                        raise InvalidPart10("part10 literal runs past the end of the object")
                    segments.append(Literal(body[position : position + length]))
                    position += length
                elif kind == _FRAME_KIND:
                    number, offset, length = _FRAME.unpack_from(body, position)
                    position += _FRAME.size
                    if not 1 <= number <= frames:
                        raise InvalidPart10(f"part10 range names frame {number} of {frames}")
                    segments.append(FrameRange(number, offset, length))
                else:
                    raise InvalidPart10(f"unknown part10 segment kind {kind}")
        except struct.error:
            raise InvalidPart10("part10 object is truncated") from None
        if position != len(body):
            raise InvalidPart10("part10 object has bytes after its last segment")
        part10 = cls(frames, tuple(segments))
        if part10.total_length != total:
            raise InvalidPart10(
                f"part10 segments add up to {part10.total_length} bytes, the header says {total}"
            )
        return part10


async def stitch(remainder: Part10 | bytes, read_frame: ReadFrame) -> AsyncIterator[bytes]:
    """Yield the original file's bytes in order: literals, and frame ranges read on demand.

    ``remainder`` is a parsed :class:`Part10` or the raw object. ``read_frame(number,
    offset, length)`` returns (awaitable) or streams (async iterable) that range of a
    frame object; each range is read when reached, so memory stays at one chunk (or one
    range, for a callable that returns bytes). A range that comes back shorter or longer
    raises :class:`Part10Mismatch` after the bytes already yielded: the answer is cut,
    never completed with wrong bytes (send the length up front, ``total_length``, and the
    client sees it short).
    """
    part10 = remainder if isinstance(remainder, Part10) else Part10.from_bytes(remainder)
    for segment in part10.segments:
        if isinstance(segment, Literal):
            if segment.data:
                yield segment.data
            continue
        got = 0
        result = read_frame(segment.number, segment.offset, segment.length)
        if inspect.isawaitable(result):
            data = await result
            got = len(data)
            _check_range(segment, got)
            if data:
                yield data
            continue
        async for chunk in result:
            got += len(chunk)
            _check_range(segment, got, partial=True)
            if chunk:
                yield chunk
        _check_range(segment, got)


def _check_range(segment: FrameRange, got: int, *, partial: bool = False) -> None:
    if got > segment.length or (not partial and got != segment.length):
        raise Part10Mismatch(
            f"frame {segment.number} gave {got} bytes from byte {segment.offset}, "
            f"{segment.length} were expected"
        )
