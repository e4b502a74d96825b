"""The ``{frames}`` path segment: ``1,2,3`` (or ``1%2C2``), 1-based, in the order asked."""

from __future__ import annotations

import re

from framecdn.errors import Refusal

#: Matched whole (``fullmatch``): ASCII digits only, no trailing newline.
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


class InvalidFrameList(Refusal, ValueError):
    """A frame list the origin refuses (400)."""


def parse_frame_list(text: str, max_count: int) -> tuple[int, ...]:
    """Frame numbers in request order; no empties, zeros, signs, spaces or duplicates."""
    items = text.replace("%2C", ",").replace("%2c", ",").split(",")
    if len(items) > max_count:
        raise InvalidFrameList(f"at most {max_count} frames per request, got {len(items)}")
    numbers: list[int] = []
    seen: set[int] = set()
    for item in items:
        if not _NUMBER.fullmatch(item):
            raise InvalidFrameList(f"frame number {item[:20]!r} is not a positive integer")
        number = int(item)
        if number in seen:
            raise InvalidFrameList(f"frame {number} is listed twice")
        seen.add(number)
        numbers.append(number)
    return tuple(numbers)


def check_in_range(numbers: tuple[int, ...], number_of_frames: int) -> None:
    """Raise InvalidFrameList for a frame beyond NumberOfFrames."""
    beyond = [n for n in numbers if n > number_of_frames]
    if beyond:
        raise InvalidFrameList(
            f"frame {beyond[0]} is beyond NumberOfFrames ({number_of_frames})"
        )
