"""Native (uncompressed) Pixel Data: where each frame lies, and its little endian bytes.

The value must hold NumberOfFrames frames of the declared geometry and no whole frame
more: fewer and a frame would be cut, more and frames the file declares nowhere would
be dropped (less than a frame of excess is padding, PS3.5 8.1.1). Frames are read by
seeking, in chunks of any size, so a frame larger than memory can still be handed out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import BinaryIO

from pydicom.uid import UID

from framecdn.ingest.geometry import Geometry
from framecdn.ingest.invalid import InvalidInstance
from framecdn.ingest.structure import UNDEFINED_LENGTH, ElementHeader

log = logging.getLogger(__name__)


class NativeFrames:
    """The frames of a checked native Pixel Data value."""

    def __init__(
        self,
        fp: BinaryIO,
        value: ElementHeader,
        geometry: Geometry,
        source_syntax: UID,
        number_of_frames: int,
    ) -> None:
        if value.length == UNDEFINED_LENGTH:
            raise InvalidInstance("native Pixel Data has undefined length")
        self._fp = fp
        self._offset = value.value_offset
        self._frame_bits = geometry.frame_bits
        self.count = number_of_frames
        self.frame_size = geometry.frame_bytes
        self._word = _swap_word(source_syntax, geometry.bits_allocated, value.vr)
        #: Bytes of the value the frames occupy (the last one ends inside this).
        self._needed = -(-self._frame_bits * number_of_frames // 8)
        self._check_length(value, geometry)

    def _check_length(self, value: ElementHeader, geometry: Geometry) -> None:
        """The value holds every frame, and no whole frame more (PS3.5 8.1.1, as pydicom).

        Less than a frame of excess is padding and is ignored; a whole frame of it means
        frames NumberOfFrames does not count, which would be dropped.
        """
        needed, length = self._needed, value.length
        frames = f"{self.count} frames of {geometry.describe()}"
        if length < needed:
            raise InvalidInstance(f"Pixel Data holds {length} bytes, {frames} need {needed}")
        file_size = self._fp.seek(0, 2)
        readable = needed + -needed % self._word  # a swapped word may hold the pad byte
        if value.value_offset + max(length, readable) > file_size:
            raise InvalidInstance(
                f"Pixel Data of {length} bytes at byte {value.value_offset} runs past the end "
                f"of the file ({file_size} bytes): the file is truncated"
            )
        excess = length - needed - needed % 2
        if excess <= 0:
            return
        if excess * 8 >= self._frame_bits:
            raise InvalidInstance(
                f"Pixel Data holds {length} bytes, room for {length * 8 // self._frame_bits} "
                f"frames of {geometry.describe()}: NumberOfFrames {self.count} is smaller than "
                "the frames present"
            )
        if geometry.photometric_interpretation == "YBR_FULL_422" and 2 * length >= 3 * needed:
            raise InvalidInstance(
                f"Pixel Data holds {length} bytes, a third more than {needed} for {frames}: "
                "PhotometricInterpretation YBR_FULL_422 is wrong"
            )
        log.warning("ignoring %d bytes of padding after the last frame", excess)

    def size(self, index: int) -> int:
        return self.frame_size

    def file_ranges(self) -> list[tuple[int, int, int, int]] | None:
        """Where each stored frame lies in the file: (file offset, length, number, 0).

        ``None`` when the stored frames are not the file's bytes (swapped big endian
        words, 1-bit frames off byte boundaries): no byte-exact part10 object then.
        """
        if self._word != 1 or self._frame_bits % 8:
            return None
        return [
            (self._offset + index * self.frame_size, self.frame_size, index + 1, 0)
            for index in range(self.count)
        ]

    def chunks(self, index: int, chunk_size: int) -> Iterator[bytes]:
        """Frame ``index`` (0-based) as little endian bytes starting at bit 0, in chunks.

        1-bit frames are not byte aligned unless Rows*Columns is a multiple of 8: they
        are shifted down (LSB first, PS3.5 8.1.1) and unused bits of the last byte are
        zero. Swapped words may straddle frames (odd 8-bit OW frames).
        """
        start, shift = divmod(index * self._frame_bits, 8)
        size, tail_bits = self.frame_size, self._frame_bits % 8
        for first in range(0, size, chunk_size):
            last = min(first + chunk_size, size)
            if shift == 0:
                data = self._little_endian(start + first, start + last)
            else:
                raw = self._little_endian(start + first, min(start + last + 1, self._needed))
                bits = int.from_bytes(raw, "little") >> shift
                data = (bits & ((1 << 8 * (last - first)) - 1)).to_bytes(last - first, "little")
            if last == size and tail_bits:
                data = data[:-1] + bytes([data[-1] & ((1 << tail_bits) - 1)])
            yield data

    def _little_endian(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the value, with big endian words swapped."""
        word = self._word
        aligned_start, aligned_end = start // word * word, -(-end // word) * word
        self._fp.seek(self._offset + aligned_start)
        data = self._fp.read(aligned_end - aligned_start)
        if len(data) != aligned_end - aligned_start:
            raise InvalidInstance("file is truncated in Pixel Data (did it change while read?)")
        if word > 1:
            data = _swap_words(data, word)
        if aligned_start == start and aligned_end == end:
            return data
        return data[start - aligned_start : end - aligned_start]


def _swap_word(source_syntax: UID, bits: int, vr: str | None) -> int:
    """Size of the words whose bytes a big endian file stores reversed (1: none).

    8-bit samples in an OW value are swapped in pairs, like pydicom's pixel_array;
    1-bit data is read as a byte stream in either byte order, as pydicom does.
    """
    if source_syntax.is_little_endian or bits == 1:
        return 1
    if bits == 8:
        return 2 if vr == "OW" else 1
    return bits // 8


def _swap_words(data: bytes, word: int) -> bytes:
    """Reverse the byte order of each ``word``-byte word (big endian to little endian)."""
    swapped = bytearray(len(data))
    for byte in range(word):
        swapped[byte::word] = data[word - 1 - byte :: word]
    return bytes(swapped)
