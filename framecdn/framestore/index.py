"""The per-instance ``index.json``: what the origin needs to answer without a HEAD per frame.

It is written last, after every frame and the metadata, so its presence is the
commit marker: an instance without an index is not there (yet, or any more).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from framecdn.framestore.keys import InstanceKey

SCHEMA_VERSION = 1


class InvalidIndex(ValueError):
    """An index.json that does not follow this schema."""


@dataclass(frozen=True, slots=True)
class FrameEntry:
    """One stored frame: its object size in bytes and SHA-256 (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where the instance came from, to make re-ingest of the same file a cheap no-op."""

    name: str
    size: int
    transfer_syntax_uid: str
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class InstanceIndex:
    """Schema of ``index.json`` (version 1)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    media_type: str
    number_of_frames: int
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    samples_per_pixel: int
    photometric_interpretation: str
    frames: tuple[FrameEntry, ...]
    metadata_size: int
    metadata_sha256: str
    source: SourceInfo
    ingested_at: str
    #: Unique per write of the instance: tells a re-ingested instance from the old one.
    ingest_id: str = ""
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(
            self.study_instance_uid, self.series_instance_uid, self.sop_instance_uid
        )

    @property
    def generation(self) -> str:
        """Identity of this write of the instance (same UIDs, new ingest: new generation)."""
        return f"{self.ingested_at}/{self.ingest_id}"

    @property
    def total_frame_bytes(self) -> int:
        return sum(frame.size for frame in self.frames)

    def frame(self, number: int) -> FrameEntry:
        """The entry of 1-based frame ``number``."""
        if not 1 <= number <= self.number_of_frames:
            raise IndexError(f"frame {number} is outside 1..{self.number_of_frames}")
        return self.frames[number - 1]

    def to_json(self) -> bytes:
        data = asdict(self)
        data["frames"] = [[frame.size, frame.sha256] for frame in self.frames]
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> InstanceIndex:
        try:
            data = json.loads(raw)
            if data.get("schema") != SCHEMA_VERSION:
                raise InvalidIndex(f"unknown index schema {data.get('schema')!r}")
            data["frames"] = tuple(FrameEntry(int(s), str(h)) for s, h in data["frames"])
            data["source"] = SourceInfo(**data["source"])
            index = cls(**data)
        except InvalidIndex:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidIndex(f"malformed index.json: {exc}") from exc
        if len(index.frames) != index.number_of_frames:
            raise InvalidIndex(
                f"index lists {len(index.frames)} frames but NumberOfFrames is "
                f"{index.number_of_frames}"
            )
        return index
