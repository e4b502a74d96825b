"""Encapsulated Pixel Data: which fragments make each frame, checked before any is emitted.

pydicom's fragment walker stops quietly at the end of a truncated file and guesses frame
boundaries from EOI markers (missing one split over two fragments), and a frame store
must never hold wrong bytes, so every item is walked and every length checked here.
What the file declares must agree with what it holds: the offset tables list
NumberOfFrames frames, a frame is never empty nor holds a second codestream, RLE and
Encapsulated Uncompressed frames are one fragment each, RLE frames have a segment per
byte of each sample, Encapsulated Uncompressed frames the size of the geometry.
Fragment positions are kept in arrays, and their number is bounded, so memory stays
small whatever the file claims.
"""

from __future__ import annotations

import bisect
import logging
import struct
from array import array
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from framecdn.framestore.transfer_syntax import ENCAPSULATED_UNCOMPRESSED
from framecdn.ingest.geometry import Geometry
from framecdn.ingest.invalid import InvalidInstance
from framecdn.ingest.structure import (
    ITEM,
    SEQUENCE_DELIMITER,
    UNDEFINED_LENGTH,
    ElementHeader,
)

log = logging.getLogger(__name__)

#: More fragments than this in one instance are refused (a whole-slide image has ~10^5).
MAX_FRAGMENTS = 1 << 21
_JPEG_START = (b"\xff\xd8",)  # SOI, also JPEG-LS
_J2K_START = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")  # SOC+SIZ, or a JP2 box
#: Syntaxes that put each frame in exactly one fragment (PS3.5 A.4.2, A.4.11).
_ONE_FRAGMENT_PER_FRAME = (RLELossless, ENCAPSULATED_UNCOMPRESSED)
_RLE_HEADER = struct.Struct("<16L")


def codestream_starts(syntax: UID) -> tuple[bytes, ...] | None:
    """How each codestream of this syntax begins, or ``None`` if it has no start marker.

    A continuation fragment cannot begin with these (JPEG stuffs 0xFF in entropy-coded
    data; JPEG 2000 forbids 0xFF4F there).
    """
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        return _JPEG_START
    if syntax in JPEG2000TransferSyntaxes:  # HTJ2K included
        return _J2K_START
    return None


class FragmentFrames:
    """The frames of a checked encapsulated Pixel Data value."""

    def __init__(
        self,
        fp: BinaryIO,
        dataset: Dataset,
        value: ElementHeader,
        geometry: Geometry,
        source_syntax: UID,
        number_of_frames: int,
    ) -> None:
        if value.length != UNDEFINED_LENGTH:
            raise InvalidInstance("encapsulated Pixel Data must have undefined length")
        self._fp = fp
        self.count = number_of_frames
        self._offsets, self._lengths = self._walk_items(value.value_offset)
        if not self._offsets:
            raise InvalidInstance("encapsulated Pixel Data has no fragments")
        basic = self._basic_offsets(value.value_offset)
        self._bounds = self._plan(dataset, source_syntax, basic)
        self._check_frames(source_syntax, geometry)

    # -- public ------------------------------------------------------------------------

    def size(self, index: int) -> int:
        return sum(self._lengths[self._bounds[index] : self._bounds[index + 1]])

    def file_ranges(self) -> list[tuple[int, int, int, int]]:
        """Each fragment's place: (file offset, length, frame number, offset in the frame)."""
        ranges = []
        for index in range(self.count):
            within = 0
            for fragment in range(self._bounds[index], self._bounds[index + 1]):
                length = self._lengths[fragment]
                ranges.append((self._offsets[fragment], length, index + 1, within))
                within += length
        return ranges

    def chunks(self, index: int, chunk_size: int) -> Iterator[bytes]:
        """Frame ``index`` (0-based): its fragments joined, in chunks of ``chunk_size``."""
        buffer = bytearray()
        for fragment in range(self._bounds[index], self._bounds[index + 1]):
            position = self._offsets[fragment]
            end = position + self._lengths[fragment]
            while position < end:
                take = min(end - position, chunk_size - len(buffer))
                self._fp.seek(position)
                piece = self._fp.read(take)
                if len(piece) != take:
                    raise InvalidInstance(f"file is truncated in frame {index + 1}")
                position += take
                if not buffer and take == chunk_size:
                    yield piece
                    continue
                buffer += piece
                if len(buffer) == chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    # -- items -------------------------------------------------------------------------

    def _walk_items(self, value_offset: int) -> tuple[array[int], array[int]]:
        """Every fragment after the Basic Offset Table, checked to lie within the file."""
        file_size = self._fp.seek(0, 2)
        offsets, lengths = array("q"), array("q")
        position = value_offset
        first = True
        while True:
            self._fp.seek(position)
            header = self._fp.read(8)
            if len(header) < 8:
                raise InvalidInstance("file is truncated: encapsulated Pixel Data has no end")
            group, element, length = struct.unpack("<HHL", header)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER:
                break
            if tag != ITEM:
                raise InvalidInstance(
                    f"corrupt Pixel Data: found ({group:04X},{element:04X}) at byte {position} "
                    "where an item was expected"
                )
            if length == UNDEFINED_LENGTH or position + 8 + length > file_size:
                raise InvalidInstance(
                    f"file is truncated or corrupt: Pixel Data item at byte {position} "
                    f"of length {length} runs past the end of the file ({file_size} bytes)"
                )
            if not first:
                offsets.append(position + 8)
                lengths.append(length)
                if len(offsets) > MAX_FRAGMENTS:
                    raise InvalidInstance(f"Pixel Data has more than {MAX_FRAGMENTS} fragments")
            first = False
            position += 8 + length
        if first:
            raise InvalidInstance("encapsulated Pixel Data has no Basic Offset Table item")
        return offsets, lengths

    def _basic_offsets(self, value_offset: int) -> list[int]:
        self._fp.seek(value_offset)
        (length,) = struct.unpack("<4xL", self._fp.read(8))
        if length % 4:
            raise InvalidInstance("corrupt Basic Offset Table: length is not a multiple of 4")
        if length and length // 4 != self.count:
            raise InvalidInstance(
                f"Basic Offset Table lists {length // 4} frames, NumberOfFrames is {self.count}"
            )
        self._fp.seek(value_offset)
        return parse_basic_offsets(self._fp)

    # -- frames ------------------------------------------------------------------------

    def _plan(self, dataset: Dataset, syntax: UID, basic: list[int]) -> array[int]:
        """Fragment index bounds of each frame, from the first source that is consistent.

        The Extended Offset Table, then the Basic Offset Table; a table listing the wrong
        number of frames is refused, one whose offsets are not item starts is ignored
        (logged). Without tables: one fragment per frame when the counts match, else
        the codestream start marker opens each frame.
        """
        extended = self._extended_offsets(dataset)
        if extended is not None:
            offsets, lengths = extended
            bounds = self._bounds_from_offsets(offsets)
            if bounds is not None and all(
                bounds[i + 1] - bounds[i] == 1 and self._lengths[bounds[i]] == lengths[i]
                for i in range(self.count)
            ):
                return bounds
            log.warning("ignoring an Extended Offset Table that does not match the fragments")
        if basic:
            bounds = self._bounds_from_offsets(basic)
            if bounds is not None:
                return bounds
            log.warning("ignoring a Basic Offset Table that does not match the fragments")
        fragments = len(self._offsets)
        if self.count == 1:
            return array("q", [0, fragments])
        if fragments == self.count:
            return array("q", range(fragments + 1))
        if fragments < self.count:
            raise InvalidInstance(
                f"found {fragments} fragments, fewer than NumberOfFrames {self.count}"
            )
        return self._bounds_from_markers(syntax)

    def _extended_offsets(self, dataset: Dataset) -> tuple[Sequence[int], Sequence[int]] | None:
        try:
            table = dataset.get("ExtendedOffsetTable")
            lengths = dataset.get("ExtendedOffsetTableLengths")
        except Exception:  # noqa: BLE001 — an unreadable table is no table
            return None
        if not table or not lengths:
            return None
        if len(table) % 8 or len(lengths) % 8:
            raise InvalidInstance("corrupt Extended Offset Table: length is not a multiple of 8")
        if len(table) // 8 != self.count or len(lengths) // 8 != self.count:
            raise InvalidInstance(
                f"Extended Offset Table lists {len(table) // 8} frames, "
                f"NumberOfFrames is {self.count}"
            )
        return (
            struct.unpack(f"<{self.count}Q", table),
            struct.unpack(f"<{self.count}Q", lengths),
        )

    def _bounds_from_offsets(self, offsets: Sequence[int]) -> array[int] | None:
        """Group fragments by frame start offsets; ``None`` if they are not item starts."""
        if offsets[0] != 0:
            return None
        # Offsets count from the first fragment's item tag (PS3.5 A.4).
        base = self._offsets[0]
        bounds = array("q")
        for offset in offsets:
            index = bisect.bisect_left(self._offsets, base + offset)
            if index == len(self._offsets) or self._offsets[index] != base + offset:
                return None
            if bounds and index <= bounds[-1]:
                return None
            bounds.append(index)
        bounds.append(len(self._offsets))
        return bounds

    def _bounds_from_markers(self, syntax: UID) -> array[int]:
        """Several fragments per frame and no offset table: a frame opens with SOI/SOC."""
        markers = codestream_starts(syntax)
        if markers is None:
            raise InvalidInstance(
                f"{len(self._offsets)} fragments for {self.count} frames and no offset table: "
                f"frame boundaries of {syntax.name} cannot be found"
            )
        bounds = array("q")
        for index in range(len(self._offsets)):
            if self._starts_codestream(index, markers):
                bounds.append(index)
            elif not bounds:
                raise InvalidInstance("first Pixel Data fragment does not start a codestream")
        if len(bounds) != self.count:
            raise InvalidInstance(
                f"found {len(bounds)} codestreams in {len(self._offsets)} fragments, "
                f"NumberOfFrames is {self.count}"
            )
        bounds.append(len(self._offsets))
        return bounds

    def _starts_codestream(self, index: int, markers: tuple[bytes, ...]) -> bool:
        self._fp.seek(self._offsets[index])
        head = self._fp.read(12)
        return any(head.startswith(marker) for marker in markers)

    def _check_frames(self, syntax: UID, geometry: Geometry) -> None:
        """What each frame holds must agree with the syntax and the declared geometry."""
        markers = codestream_starts(syntax)
        for index in range(self.count):
            first, last = self._bounds[index], self._bounds[index + 1]
            number = index + 1
            if self.size(index) == 0:
                raise InvalidInstance(f"frame {number} is empty")
            if syntax in _ONE_FRAGMENT_PER_FRAME and last - first != 1:
                raise InvalidInstance(
                    f"{syntax.name} holds one fragment per frame; frame {number} has "
                    f"{last - first} (NumberOfFrames {self.count} is smaller than the frames "
                    "present?)"
                )
            if markers is not None:
                found = 1 + sum(
                    self._starts_codestream(i, markers) for i in range(first + 1, last)
                )
                if found > 1:
                    raise InvalidInstance(
                        f"frame {number} holds {found} codestreams: NumberOfFrames "
                        f"{self.count} is smaller than the frames present"
                    )
            if syntax == RLELossless:
                self._check_rle_header(number, first, geometry)
            elif syntax == ENCAPSULATED_UNCOMPRESSED:
                size, needed = self.size(index), geometry.frame_bytes
                if size not in (needed, needed + needed % 2):
                    raise InvalidInstance(
                        f"frame {number} holds {size} bytes, {geometry.describe()} needs "
                        f"{needed} bytes"
                    )

    def _check_rle_header(self, number: int, fragment: int, geometry: Geometry) -> None:
        """PS3.5 G.5: a 64-byte header, one segment per byte of each sample."""
        length = self._lengths[fragment]
        if length < _RLE_HEADER.size:
            raise InvalidInstance(f"RLE frame {number} is shorter than its 64-byte header")
        self._fp.seek(self._offsets[fragment])
        segments, *offsets = _RLE_HEADER.unpack(self._fp.read(_RLE_HEADER.size))
        needed = geometry.samples_per_pixel * -(-geometry.bits_allocated // 8)
        if needed > len(offsets):
            raise InvalidInstance(f"RLE cannot encode {geometry.describe()} (at most 15 segments)")
        if segments != needed:
            raise InvalidInstance(
                f"RLE frame {number} has {segments} segments, {geometry.describe()} needs "
                f"{needed}"
            )
        used = offsets[:segments]
        if used[0] != _RLE_HEADER.size or any(
            a >= b for a, b in zip(used, [*used[1:], length], strict=True)
        ):
            raise InvalidInstance(f"RLE frame {number} has corrupt segment offsets")
