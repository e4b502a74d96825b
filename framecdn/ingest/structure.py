"""Checking a dataset's element structure before pydicom parses it.

pydicom reads what a file declares. A length past the end of the file is allocated and
read short, an undefined-length value that never ends becomes a warning and a dataset
that silently stops early, and nested sequences are read by recursion (20,000 levels
end in ``RecursionError``). This walk visits every element header once, iteratively and
without reading values, following the rules pydicom reads by (implicit VR detected per
dataset, undefined-length UN read as a sequence, encapsulated values inside items), and
refuses the file at the first element that cannot be: past the end of its item or of
the data, an item that is not one, a delimiter that never comes, or sequences nested
deeper than :data:`MAX_NESTING`. It stops at the top-level element the caller names
(Pixel Data), whose value the splitter reads itself.

On a deflated file the walk runs while inflating, so an element longer than the
dataset could ever inflate to ends the work there (see :mod:`framecdn.ingest.inflate`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from framecdn.ingest.invalid import InvalidInstance

#: Sequences nested deeper than this are refused; pydicom reads each level by recursion.
MAX_NESTING = 64
#: More elements than this are refused: pydicom holds each in memory (~200 bytes) and a
#: file of tiny elements would take minutes. Big RT Structure Sets have ~10^5.
MAX_ELEMENTS = 250_000

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD

_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_KNOWN_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_SCAN_CHUNK = 1 << 16


class Source(Protocol):
    """What the walk reads from: a binary file, or a file inflating as it is read."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


@dataclass(frozen=True, slots=True)
class ElementHeader:
    """An element's tag, VR (``None`` in implicit VR), value length and where it lies."""

    tag: int
    vr: str | None
    length: int
    offset: int
    value_offset: int

    @property
    def name(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class DataEnd:
    """Where the data ends for the walk, and how to say it in a refusal."""

    offset: int
    what: str  # e.g. "the end of the file (1234 bytes)"
    verdict: str = "the file is truncated or corrupt"


@dataclass(slots=True)
class _Level:
    """An open dataset or sequence: where it must end, and how its elements are encoded."""

    sequence: bool
    end: int | None  # None: at a delimiter (or, for the top level, at the end of the data)
    limit: int  # nothing inside may reach past this
    implicit: bool
    top: bool = False


def walk_dataset(
    fp: Source,
    start: int,
    *,
    implicit: bool,
    little: bool,
    end: DataEnd,
    stop: Callable[[int], bool],
    max_elements: int = MAX_ELEMENTS,
) -> ElementHeader | None:
    """Check every element from ``start``; return the first top-level one ``stop`` picks.

    Returns ``None`` when the data ends after a whole element with nothing picked.
    Raises :class:`InvalidInstance` at the first element that cannot be, or past
    ``max_elements`` elements (items included).
    """
    return _Walk(fp, little, end, max_elements).run(start, implicit, stop)


def check_value_fits(header: ElementHeader, end: DataEnd) -> None:
    """Refuse an element whose defined-length value runs past the end of the data."""
    if header.length != UNDEFINED_LENGTH and header.value_offset + header.length > end.offset:
        raise InvalidInstance(_past(header, end.what, end.verdict))


def _past(header: ElementHeader, what: str, verdict: str) -> str:
    return (
        f"element {header.name} of {header.length} bytes at byte {header.offset} "
        f"runs past {what}: {verdict}"
    )


class _Walk:
    def __init__(self, fp: Source, little: bool, end: DataEnd, max_elements: int) -> None:
        self._fp = fp
        self._end = end
        self._elements_left = max_elements
        self._endian = "<" if little else ">"
        self._depth = 0
        self._stack: list[_Level] = []

    def run(
        self, start: int, implicit: bool, stop: Callable[[int], bool]
    ) -> ElementHeader | None:
        top = _Level(
            sequence=False, end=None, limit=self._end.offset,
            implicit=self._detect_implicit(start, implicit, in_sequence=False), top=True,
        )
        self._stack = [top]
        position = start
        while True:
            level = self._stack[-1]
            if level.end is not None and position >= level.end:
                self._close(level, position)
                continue
            if level.sequence:
                position = self._item(level, position)
                continue
            head = self._read(position, 8)
            if level.top and not head:
                return None
            if len(head) < 8:
                raise InvalidInstance(self._truncated(position, level))
            header = self._element(level, position, head)
            self._count(position)
            if header.tag == ITEM_DELIMITER:
                if level.top or level.end is not None:
                    raise InvalidInstance(
                        f"corrupt dataset: Item Delimitation Item at byte {position} "
                        "outside an item of undefined length"
                    )
                self._stack.pop()
                position += 8
                continue
            if level.top and stop(header.tag):
                return header
            position = self._value(level, header)

    # -- elements ----------------------------------------------------------------------

    def _element(self, level: _Level, position: int, head: bytes) -> ElementHeader:
        """Parse an element header the way pydicom's data_element_generator does."""
        group, element = struct.unpack(f"{self._endian}HH", head[:4])
        tag = group << 16 | element
        vr_bytes = head[4:6]
        if level.implicit or tag == ITEM_DELIMITER:
            vr, value_offset = None, position + 8
            (length,) = struct.unpack(f"{self._endian}L", head[4:])
        elif vr_bytes in _LONG_VRS:
            extra = self._read(position + 8, 4)
            if len(extra) < 4:
                raise InvalidInstance(self._truncated(position, level))
            vr, value_offset = vr_bytes.decode("latin-1"), position + 12
            (length,) = struct.unpack(f"{self._endian}L", extra)
        elif vr_bytes in _KNOWN_VRS or b"AA" <= vr_bytes <= b"ZZ":  # bytes order, as pydicom
            vr, value_offset = vr_bytes.decode("latin-1"), position + 8
            (length,) = struct.unpack(f"{self._endian}H", head[6:])
        else:  # not a VR: pydicom reads this one element as implicit VR
            vr, value_offset = None, position + 8
            (length,) = struct.unpack(f"{self._endian}L", head[4:])
        return ElementHeader(tag, vr, length, position, value_offset)

    def _value(self, level: _Level, header: ElementHeader) -> int:
        """Step over (or into) the element's value; return where the next element starts."""
        if header.length == UNDEFINED_LENGTH:
            if self._undefined_is_sequence(header):
                self._open_sequence(level, header, None)
                return header.value_offset
            return self._skip_undefined(level, header)
        value_end = header.value_offset + header.length
        if value_end > level.limit:
            raise InvalidInstance(_past(header, self._bound(level), self._end.verdict))
        if self._defined_is_sequence(header):
            self._open_sequence(level, header, value_end)
            return header.value_offset
        return value_end

    def _undefined_is_sequence(self, header: ElementHeader) -> bool:
        if header.vr in ("SQ", "UN"):
            return True
        if header.vr is not None:
            return False
        try:
            return dictionary_VR(header.tag) == "SQ"
        except KeyError:  # a private or unknown tag: a sequence if an item follows
            peek = self._read(header.value_offset, 4)
            return len(peek) == 4 and self._tag(peek) == ITEM

    @staticmethod
    def _defined_is_sequence(header: ElementHeader) -> bool:
        """Sequences pydicom will parse when the element is read (public tags only)."""
        if header.vr == "SQ":
            return True
        if header.vr is None or (header.vr == "UN" and header.length < 0xFFFF):
            if header.tag >> 16 & 1:
                return False  # private: pydicom needs the creator; left as bytes here
            try:
                return dictionary_VR(header.tag) == "SQ"
            except KeyError:
                return False
        return False

    def _skip_undefined(self, level: _Level, header: ElementHeader) -> int:
        """An undefined-length value that is not a sequence (e.g. nested encapsulated data).

        Like pydicom: walk it as items up to the Sequence Delimitation Item, and if it is
        not made of items, take the first delimiter found in the bytes.
        """
        position = header.value_offset
        while position + 8 <= level.limit:
            head = self._read(position, 8)
            if len(head) < 8:
                break
            tag = self._tag(head)
            if tag == SEQUENCE_DELIMITER:
                return position + 8
            (length,) = struct.unpack(f"{self._endian}L", head[4:])
            if tag != ITEM or length == UNDEFINED_LENGTH:
                break
            position += 8 + length
        found = self._find_delimiter(header.value_offset, level.limit)
        if found is None:
            raise InvalidInstance(
                f"element {header.name} of undefined length at byte {header.offset} never "
                "ends (no Sequence Delimitation Item): the file is truncated or corrupt"
            )
        return found + 8

    def _find_delimiter(self, start: int, limit: int) -> int | None:
        delimiter = struct.pack(f"{self._endian}HH", 0xFFFE, 0xE0DD)
        position = start
        while position < limit:
            chunk = self._read(position, min(_SCAN_CHUNK, limit - position))
            if not chunk:
                return None
            index = chunk.find(delimiter)
            if index >= 0:
                return position + index
            if len(chunk) < 4:
                return None
            position += len(chunk) - 3  # a delimiter may straddle two chunks
        return None

    # -- sequences and items -----------------------------------------------------------

    def _open_sequence(self, level: _Level, header: ElementHeader, end: int | None) -> None:
        if self._depth >= MAX_NESTING:
            raise InvalidInstance(
                f"sequences nested deeper than {MAX_NESTING} levels (at byte {header.offset})"
            )
        self._depth += 1
        limit = level.limit if end is None else end
        self._stack.append(_Level(True, end, limit, level.implicit))

    def _item(self, level: _Level, position: int) -> int:
        self._count(position)
        head = self._read(position, 8)
        if len(head) < 8:
            raise InvalidInstance(self._truncated(position, level))
        tag = self._tag(head)
        (length,) = struct.unpack(f"{self._endian}L", head[4:])
        if tag == SEQUENCE_DELIMITER:  # pydicom ends a defined-length sequence here too
            self._stack.pop()
            self._depth -= 1
            return position + 8 if level.end is None else level.end
        if tag != ITEM:
            raise InvalidInstance(
                f"corrupt sequence: found ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte "
                f"{position} where an item was expected"
            )
        implicit = self._detect_implicit(position + 8, level.implicit, in_sequence=True)
        if length == UNDEFINED_LENGTH:
            self._stack.append(_Level(False, None, level.limit, implicit))
        else:
            item_end = position + 8 + length
            if item_end > level.limit:
                item = ElementHeader(ITEM, None, length, position, position + 8)
                raise InvalidInstance(_past(item, self._bound(level), self._end.verdict))
            self._stack.append(_Level(False, item_end, item_end, implicit))
        return position + 8

    def _close(self, level: _Level, position: int) -> None:
        """Leave a defined-length item or sequence, which must end exactly where it said."""
        if position != level.end:
            kind = "sequence" if level.sequence else "item"
            raise InvalidInstance(
                f"corrupt dataset: an element crosses the end of its {kind} at byte {level.end}"
            )
        self._stack.pop()
        if level.sequence:
            self._depth -= 1

    def _detect_implicit(self, position: int, assumed: bool, *, in_sequence: bool) -> bool:
        """pydicom's rule: a dataset is implicit VR if its first element has no valid VR."""
        if in_sequence and assumed:
            return True
        head = self._read(position, 6)
        if len(head) < 6:
            return assumed
        return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)

    # -- helpers -----------------------------------------------------------------------

    def _count(self, position: int) -> None:
        self._elements_left -= 1
        if self._elements_left < 0:
            raise InvalidInstance(f"too many elements (more than the limit, at byte {position})")

    def _read(self, position: int, size: int) -> bytes:
        self._fp.seek(position)
        return self._fp.read(size)

    def _tag(self, head: bytes) -> int:
        group, element = struct.unpack(f"{self._endian}HH", head[:4])
        return int(group << 16 | element)

    def _bound(self, level: _Level) -> str:
        if level.limit == self._end.offset:
            return self._end.what
        return f"the end of its item (byte {level.limit})"

    def _truncated(self, position: int, level: _Level) -> str:
        if any(open_level.end is None and not open_level.top for open_level in self._stack):
            return (
                f"file is truncated at byte {position}: a sequence or item of undefined "
                "length never ends"
            )
        return f"file is truncated at byte {position}, inside an element header"
