"""The per-instance ``index.json``: what the origin needs to answer without a HEAD per frame.

It is written last, after every frame and the metadata, so its presence is the
commit marker: an instance without an index is not there (yet, or any more).

Schema 2 (written now) names the instance's *generation*: its ``ingest_id``, under
which the frames and metadata of this write are stored (``framestore.keys``). A
replacement writes a new generation and swaps the index in one PUT, so readers see
the old version or the new one, never a mix. Schema 1 indexes (written before
generations; their objects lie directly under the instance) are still read and
served as they are; ``framecdn verify`` reports them, and ingesting such an instance
again writes it as schema 2 and removes the schema-1 objects after the swap.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from framecdn.errors import FramecdnError
from framecdn.framestore.keys import InstanceKey, InvalidGeneration, validate_generation

SCHEMA_VERSION = 2
#: Schemas this code reads: 1 (objects directly under the instance), 2 (under a generation).
READABLE_SCHEMAS = frozenset({1, 2})


class InvalidIndex(FramecdnError, ValueError):
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
    """Schema of ``index.json`` (version 2; version 1 is read too)."""

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
    #: Unique per write of the instance; in schema 2 also its generation (key segment).
    ingest_id: str = ""
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(
            self.study_instance_uid, self.series_instance_uid, self.sop_instance_uid
        )

    @property
    def generation(self) -> str | None:
        """Where this write's frames and metadata are stored (None: schema-1 layout)."""
        return self.ingest_id if self.schema >= 2 else None

    @property
    def identity(self) -> str:
        """This write of the instance, whatever the schema (same UIDs, new ingest: new)."""
        return f"{self.ingested_at}/{self.ingest_id}"

    @property
    def total_frame_bytes(self) -> int:
        return sum(frame.size for frame in self.frames)

    @property
    def part10(self) -> FrameEntry | None:
        """The generation's part10 object (size, SHA-256), if ingest wrote one.

        It rebuilds the ingested file byte for byte with the frames
        (:mod:`framecdn.framestore.part10`); kept under ``extra["part10"]`` so indexes
        with it stay readable by code that predates it.
        """
        entry = self.extra.get("part10")
        if not isinstance(entry, dict):
            return None
        try:
            return FrameEntry(int(entry["size"]), str(entry["sha256"]))
        except (KeyError, TypeError, ValueError):
            return None

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
            if data.get("schema") not in READABLE_SCHEMAS:
                raise InvalidIndex(f"unknown index schema {data.get('schema')!r}")
            if data["schema"] >= 2:
                validate_generation(data.get("ingest_id"))
            data["frames"] = tuple(FrameEntry(int(s), str(h)) for s, h in data["frames"])
            data["source"] = SourceInfo(**data["source"])
            index = cls(**data)
        except InvalidIndex:
            raise
        except InvalidGeneration as exc:
            raise InvalidIndex(f"index.json names no valid generation: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidIndex(f"malformed index.json: {exc}") from exc
        if len(index.frames) != index.number_of_frames:
            raise InvalidIndex(
                f"index lists {len(index.frames)} frames but NumberOfFrames is "
                f"{index.number_of_frames}"
            )
        return index
