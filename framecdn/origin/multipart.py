"""The multipart/related body of a frame list, laid out before a byte is sent.

Every frame's size is in the index, so the whole body (part headers, frames,
delimiters) is known up front: the exact Content-Length goes out with the
headers and the frames are streamed between precomputed part headers.

Body shape (no preamble; Cornerstone takes the boundary from the first line and
matches ``Content-Type:`` case-sensitively)::

    --B\\r\\nContent-Type: <media>; transfer-syntax=<uid>\\r\\nContent-Location: <url>\\r\\n
    Content-Length: <n>\\r\\n\\r\\n<frame bytes>\\r\\n--B\\r\\n ... <frame bytes>\\r\\n--B--\\r\\n

The boundary is derived from what the body contains (frame checksums, locations,
representation) so the same request always yields the same bytes: the strong
ETag holds and caches can store it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Part:
    """One frame of the body: where it can be fetched on its own and how big it is."""

    location: str
    size: int
    sha256: str


def make_boundary(part_content_type: str, parts: Sequence[Part]) -> str:
    """A boundary determined by the body's content (stable across requests)."""
    digest = hashlib.sha256(part_content_type.encode())
    for part in parts:
        digest.update(f"\n{part.location}\n{part.size}\n{part.sha256}".encode())
    return f"framecdn-{digest.hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class MultipartLayout:
    """Precomputed headers and delimiters of a multipart/related frame body."""

    boundary: str
    part_content_type: str
    parts: tuple[Part, ...]

    @classmethod
    def build(cls, part_content_type: str, parts: Sequence[Part]) -> MultipartLayout:
        parts = tuple(parts)
        if not parts:
            raise ValueError("a multipart body needs at least one part")
        return cls(make_boundary(part_content_type, parts), part_content_type, parts)

    def part_head(self, index: int) -> bytes:
        """Everything that precedes part ``index``'s bytes (delimiter and headers)."""
        part = self.parts[index]
        lead = "" if index == 0 else "\r\n"
        return (
            f"{lead}--{self.boundary}\r\n"
            f"Content-Type: {self.part_content_type}\r\n"
            f"Content-Location: {part.location}\r\n"
            f"Content-Length: {part.size}\r\n"
            "\r\n"
        ).encode("ascii")

    @property
    def closing(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_length(self) -> int:
        heads = sum(len(self.part_head(i)) for i in range(len(self.parts)))
        return heads + sum(part.size for part in self.parts) + len(self.closing)

    def render(self, frames: Sequence[bytes]) -> bytes:
        """The whole body from in-memory frames (for tests and tiny frames only)."""
        if len(frames) != len(self.parts):
            raise ValueError("one frame per part")
        out = bytearray()
        for index, frame in enumerate(frames):
            out += self.part_head(index)
            out += frame
        out += self.closing
        return bytes(out)
