"""Inflating a Deflated Explicit VR Little Endian dataset on disk, with limits.

pydicom inflates a deflated dataset whole, in memory. Here it is inflated into a
spool file, one bounded step at a time and only as far as a reader has asked, so the
splitter can check the element structure while inflating and stop at the first
element that could never fit, before the bulk of a deflate bomb is inflated. Two
limits hold whatever the structure: the inflated size, and its ratio to the deflated
bytes consumed so far (past a small allowance, so a short run of zeros is no bomb).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from framecdn.ingest.invalid import InvalidInstance

MiB = 1 << 20
_FEED = MiB  # deflated bytes read at a time
_STEP = 64 * 1024  # inflated bytes taken from zlib per step: a reader gets little more than it asks


@dataclass(frozen=True, slots=True)
class InflateLimits:
    """How far a deflated dataset may inflate (Settings: ``ingest_max_inflate_*``)."""

    max_ratio: int = 200
    max_bytes: int = 4096 * MiB
    #: Inflated bytes allowed before the ratio applies.
    ratio_allowance: int = 16 * MiB

    def __post_init__(self) -> None:
        if self.max_ratio < 1 or self.max_bytes < 1:
            raise ValueError("inflate limits must be at least 1")

    def most_inflated(self, deflated_size: int) -> int:
        """The largest inflated size ``deflated_size`` bytes may reach under these limits."""
        by_ratio = max(self.ratio_allowance, self.max_ratio * deflated_size)
        return min(self.max_bytes, by_ratio)


class InflatingFile:
    """A read-only, seekable view of a spool file that inflates on demand.

    Inflated bytes are appended to whatever the spool holds; positions are spool positions.
    Reading past what is inflated inflates further; reading past the end of the
    inflated dataset returns short, like a file.
    """

    def __init__(
        self, source: BinaryIO, spool: BinaryIO, *, deflated_size: int, limits: InflateLimits
    ) -> None:
        self._source = source
        self._spool = spool
        self._limits = limits
        self._header = spool.seek(0, io.SEEK_END)
        self._size = self._header
        self._position = 0
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self._fed = 0
        self._done = False
        #: No valid inflated file can be longer than this (the limits say so).
        self.most = self._header + limits.most_inflated(deflated_size)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self.finish()
            offset += self._size
        elif whence == io.SEEK_CUR:
            offset += self._position
        self._position = max(0, offset)
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            self.finish()
            size = self._size - self._position
        self._inflate_to(self._position + size)
        self._spool.seek(self._position)
        data = self._spool.read(max(0, min(size, self._size - self._position)))
        self._position += len(data)
        return data

    def finish(self) -> BinaryIO:
        """Inflate the rest (within the limits) and return the spool file."""
        self._inflate_to(None)
        return self._spool

    def _inflate_to(self, end: int | None) -> None:
        while not self._done and (end is None or self._size < end):
            self._step()

    def _step(self) -> None:
        if not self._pending:
            self._pending = self._source.read(_FEED)
            self._fed += len(self._pending)
            if not self._pending:
                self._done = True
                if not self._inflater.eof:
                    raise InvalidInstance("deflated dataset is truncated")
                return
        try:
            out = self._inflater.decompress(self._pending, _STEP)
        except zlib.error as exc:
            raise InvalidInstance(f"deflated dataset is corrupt ({exc})") from None
        self._pending = self._inflater.unconsumed_tail
        if self._inflater.eof:
            self._done = True  # bytes after the deflate stream are not part of the dataset
        self._check(self._size + len(out) - self._header)
        self._spool.seek(self._size)
        self._spool.write(out)
        self._size += len(out)

    def _check(self, inflated: int) -> None:
        limits = self._limits
        if inflated > limits.max_bytes:
            raise InvalidInstance(
                f"deflated dataset inflates past {limits.max_bytes // MiB} MB "
                "(FRAMECDN_INGEST_MAX_INFLATED_MB)"
            )
        consumed = self._fed - len(self._pending)
        if inflated > limits.ratio_allowance and inflated > limits.max_ratio * consumed:
            raise InvalidInstance(
                f"deflated dataset inflates more than {limits.max_ratio}:1, a deflate bomb? "
                "(FRAMECDN_INGEST_MAX_INFLATE_RATIO)"
            )
