"""Single byte ranges (RFC 9110 §14) on single-part frames.

Multi-range requests and syntax we do not understand are ignored (a full 200 is
a valid answer); a range that starts past the end is 416. Positions are ASCII digits
only (``str.isdigit`` also takes superscripts and other scripts' digits, which ``int``
then refuses or reads).
"""

from __future__ import annotations

import re

from framecdn.errors import Refusal

_POSITION = re.compile(r"[0-9]{1,18}")


class RangeNotSatisfiable(Refusal):
    """The range lies outside the representation (416)."""

    status = 416

    def __init__(self, size: int) -> None:
        super().__init__("range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        self.size = size
        super().__init__(f"range not satisfiable for {size} bytes")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive, or None to serve the whole representation."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text == "" or _POSITION.fullmatch(first_text)):
        return None
    if last_text and not _POSITION.fullmatch(last_text):
        return None
    if first_text == "":
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(size)
    last = size - 1 if last is None else last
    return first, min(last, size - 1)


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """False when an If-Range names another validator: then the Range is ignored."""
    if if_range is None:
        return True
    return if_range.strip() == etag
