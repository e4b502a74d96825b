"""What instances truly hold, for ``framecdn verify``: their frames read from a source.

:mod:`framecdn.maintenance.verify` compares the bucket with a ``Reference`` (each
frame's size and SHA-256) and repairs through a re-ingest, but imports no ingest code;
the references live here because reading a file's frames takes the ingest splitter.
:class:`SourceFiles` reads files on disk (``--source``), :class:`SourceInstances`
downloads each instance from a :class:`~framecdn.ingest.sources.Source` (the upstream
PACS) to a spool directory first. Both give the file of an instance too
(:meth:`path_of`), which ``--repair`` ingests again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from framecdn.errors import FramecdnError
from framecdn.framestore.index import FrameEntry
from framecdn.framestore.keys import InstanceKey
from framecdn.ingest.pipeline import iter_sources
from framecdn.ingest.sources import InstanceGone, Source
from framecdn.ingest.splitter import InflateLimits, open_instance

log = logging.getLogger("framecdn.verify")

_CHUNK = 8 << 20


def file_frames(path: Path, limits: InflateLimits) -> tuple[InstanceKey, list[FrameEntry]]:
    """An instance file's key and each frame's size and SHA-256 (read in chunks)."""
    with open_instance(path, limits=limits) as split:
        ds = split.dataset
        key = InstanceKey(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
        frames = []
        for reader in split.frame_readers():
            digest = hashlib.sha256()
            for chunk in reader.chunks(_CHUNK):
                digest.update(chunk)
            frames.append(FrameEntry(reader.size, digest.hexdigest()))
    return key, frames


class SourceFiles:
    """The instances in the files named (directories searched): what they truly hold.

    Also a :class:`~framecdn.ingest.sources.Source` (``download`` copies the file).
    """

    def __init__(self, paths: list[str], limits: InflateLimits) -> None:
        self.limits = limits
        self._paths = [p for p in iter_sources(paths) if p.is_file()]
        self._where: dict[InstanceKey, Path] | None = None

    def path_of(self, key: InstanceKey) -> Path | None:
        if self._where is None:
            self._where = dict(self._scan())
        return self._where.get(key)

    def _scan(self) -> Iterator[tuple[InstanceKey, Path]]:
        for path in self._paths:
            try:
                with open_instance(path, limits=self.limits) as split:
                    ds = split.dataset
                    key = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
                yield InstanceKey(*(str(uid) for uid in key)), path
            except (OSError, FramecdnError) as exc:  # InvalidInstance, InvalidUID
                log.warning("%s: not a source (%s)", path, exc)

    def frames(self, key: InstanceKey) -> list[FrameEntry] | None:
        path = self.path_of(key)
        return None if path is None else file_frames(path, self.limits)[1]

    def download(
        self, key: InstanceKey, into: BinaryIO, *, cancelled: threading.Event | None = None
    ) -> int:
        path = self.path_of(key)
        if path is None:
            raise InstanceGone(f"no file among the sources holds instance {key.instance}")
        with open(path, "rb") as source:
            shutil.copyfileobj(source, into)
        return path.stat().st_size


class SourceInstances:
    """The instances as a :class:`~framecdn.ingest.sources.Source` holds them.

    Each is downloaded (once) to a file in ``spool`` and split like a source file; an
    instance the source lacks has no frames (None).
    """

    def __init__(self, source: Source, spool: Path, limits: InflateLimits) -> None:
        self.source = source
        self.spool = spool
        self.limits = limits
        self._files: dict[InstanceKey, Path | None] = {}

    def path_of(self, key: InstanceKey) -> Path | None:
        if key not in self._files:
            path = self.spool / f"{key.instance}.dcm"
            try:
                with open(path, "wb") as out:
                    self.source.download(key, out)
            except InstanceGone:
                path.unlink(missing_ok=True)
                self._files[key] = None
            else:
                self._files[key] = path
        return self._files[key]

    def frames(self, key: InstanceKey) -> list[FrameEntry] | None:
        path = self.path_of(key)
        return None if path is None else file_frames(path, self.limits)[1]
