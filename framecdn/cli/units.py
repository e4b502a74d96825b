"""Numbers as people write them: sizes with suffixes (read and printed), counted nouns.

One size parser serves every size flag (``--large-bytes``, ``--max-bytes``...), so
``1M`` means the same wherever it is typed.
"""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``500G``, ``1.5TB``, ``200MiB``, ``1M`` or plain bytes, as a whole number of bytes.

    K, M, G, T, P are powers of 1000; Ki, Mi, Gi, Ti, Pi powers of 1024. An argparse
    ``type``: a bad value is a usage error naming what would work.
    """
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (bytes, or with a suffix: 1M, 500G, 1.5TB, 200MiB)"
        )
    number, unit, binary = match.groups()
    if binary and not unit:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (a binary unit needs K/M/G/T/P)")
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGTP".index(unit.upper() or " "))


def human_bytes(size: int) -> str:
    """``712.4 GB``: decimal units, as disks and S3 bills count."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``1 instance``, ``2 instances``, ``0 studies`` (give ``plural`` when not noun + s)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
