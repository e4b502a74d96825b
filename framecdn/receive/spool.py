"""Where received datasets wait on disk while they are ingested.

pynetdicom writes each incoming C-STORE dataset straight to a ``NamedTemporaryFile``
in :mod:`tempfile`'s directory, so nothing of it is held in memory; this module points
that directory at the receiver's own spool and removes what an aborted association
leaves behind (pynetdicom deletes a file only after its handler ran).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("framecdn.receive")

#: The files pynetdicom writes (``NamedTemporaryFile(suffix=".dcm")``).
_PATTERN = "tmp*.dcm"


class Spool:
    """The receiver's spool directory: a ``framecdn-receive`` directory of its own.

    ``stale_after`` seconds without a write (and no ingest reading it) make a file
    the remains of an association that was aborted mid-transfer.
    """

    def __init__(self, parent: str | None, stale_after: float) -> None:
        self.directory = Path(parent or tempfile.gettempdir()) / "framecdn-receive"
        self.stale_after = stale_after
        self._reading: set[Path] = set()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the directory, empty it of an earlier run's files, and send pynetdicom's
        temporary files there (the whole process's: this is the receiver's own)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = self._remove(lambda path: True)
        if removed:
            log.info("spool: removed %d file(s) left by an earlier run", removed)
        tempfile.tempdir = str(self.directory)

    @contextmanager
    def reading(self, path: Path) -> Iterator[None]:
        """Keep ``path`` from being swept while an ingest reads it."""
        with self._lock:
            self._reading.add(path)
        try:
            yield
        finally:
            with self._lock:
                self._reading.discard(path)

    def sweep(self) -> int:
        """Remove the stale files; return how many."""
        deadline = time.time() - self.stale_after
        with self._lock:
            reading = set(self._reading)
        return self._remove(lambda path: path not in reading and _mtime(path) < deadline)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(_PATTERN))

    def _remove(self, stale: Callable[[Path], bool]) -> int:
        removed = 0
        for path in self.files():
            if stale(path):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by pynetdicom meanwhile
        return float("inf")
