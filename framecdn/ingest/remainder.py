"""The part10 object of an instance being ingested: the file minus its frames (#20 item 2).

Built from the split file's layout (:meth:`SplitInstance.frame_file_ranges`): every
byte not in a stored frame is a literal, every stored frame (or fragment of one) is a
range of its frame object; :mod:`framecdn.framestore.part10` has the format and the
stitching. Literal bytes are read from the file a bounded amount at a time and capped at
:data:`~framecdn.framestore.part10.MAX_LITERAL_BYTES`: beyond it the instance is stored
without a part10 object (logged), as are deflated sources and native frames that are not
the file's bytes.
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO

from framecdn.framestore.part10 import (
    MAX_LITERAL_BYTES,
    MAX_SEGMENTS,
    FrameRange,
    Literal,
    Part10,
    Segment,
)
from framecdn.ingest.invalid import InvalidInstance

log = logging.getLogger(__name__)


def build_part10(
    fp: BinaryIO,
    ranges: list[tuple[int, int, int, int]],
    number_of_frames: int,
    *,
    max_literal_bytes: int | None = None,
) -> Part10 | None:
    """The part10 object of the file ``fp``, whose frames lie at ``ranges``.

    ``ranges`` are (file offset, length, frame number, offset in the frame object),
    in file order and not overlapping. ``None`` (logged) when the literal bytes would
    exceed ``max_literal_bytes`` (default :data:`MAX_LITERAL_BYTES`).
    """
    if max_literal_bytes is None:
        max_literal_bytes = MAX_LITERAL_BYTES
    size = fp.seek(0, os.SEEK_END)
    literal_bytes = size - sum(length for _, length, _, _ in ranges)
    if literal_bytes > max_literal_bytes or 2 * len(ranges) + 1 > MAX_SEGMENTS:
        log.warning(
            "no byte-exact copy kept: %d bytes outside the frames (at most %d are kept)",
            literal_bytes,
            max_literal_bytes,
        )
        return None
    segments: list[Segment] = []
    position = 0
    for offset, length, number, within in ranges:
        if offset < position:
            raise InvalidInstance("frame ranges overlap (a splitter bug)")
        if offset > position:
            segments.append(Literal(_read(fp, position, offset - position)))
        segments.append(FrameRange(number, within, length))
        position = offset + length
    if position < size:
        segments.append(Literal(_read(fp, position, size - position)))
    return Part10(number_of_frames, tuple(segments))


def _read(fp: BinaryIO, offset: int, length: int) -> bytes:
    fp.seek(offset)
    data = fp.read(length)
    if len(data) != length:
        raise InvalidInstance("file is truncated (did it change while read?)")
    return data
