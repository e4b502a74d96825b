"""What a follower takes: its shard of the SOP Instance UIDs, and the filters.

Both are decided from Orthanc's index (no file read), before any download.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from framecdn.errors import ConfigError
from framecdn.framestore.config import FollowSettings
from framecdn.ingest.orthanc import InstanceInfo, SeriesInfo


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``: the instances whose SOP Instance UID hashes there.

    The hash is SHA-256 of the UID, so every follower (any machine, any Python)
    agrees on it and N followers split one feed with no coordinator.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text or "")
        if match is None:
            raise ConfigError(f"shard {text!r} is not K/N (e.g. 0/2 and 1/2 for two followers)")
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise ConfigError(f"shard {text!r}: K must be 0..N-1 (0-based), N at least 1")
        return cls(index, count)

    def takes(self, sop_instance_uid: str) -> bool:
        digest = hashlib.sha256(sop_instance_uid.encode()).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class Filters:
    """Which instances to follow, decided from Orthanc's index before any download."""

    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    min_frames: int = 1

    @classmethod
    def from_settings(cls, settings: FollowSettings) -> Filters:
        return cls(
            modalities=frozenset(m.upper() for m in settings.follow_modalities),
            sop_classes=frozenset(settings.follow_sop_classes),
            min_frames=settings.follow_min_frames,
        )

    def refuse(
        self, instance: InstanceInfo, series: SeriesInfo, sop_class: Callable[[], str]
    ) -> str | None:
        """Why the instance is not wanted, or None. ``sop_class`` is asked only if needed."""
        if instance.number_of_frames < self.min_frames:
            return f"{instance.number_of_frames} frames < {self.min_frames}"
        if self.modalities and series.modality.upper() not in self.modalities:
            return f"modality {series.modality or '(none)'}"
        if self.sop_classes:
            uid = sop_class()
            if uid not in self.sop_classes:
                return f"SOP class {uid or '(none)'}"
        return None
