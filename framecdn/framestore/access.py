"""Study last-access markers: how the origin tells the sweeper what is being read.

The origin records accesses in memory and writes at most one small marker object
per study per flush interval (never a write per request)::

    {prefix}access/studies/{S}      body: {"study": S, "last_access": <unix seconds>}

The sweeper lists ``{prefix}access/`` to find the least recently read studies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

from framecdn.framestore.keys import KeyLayout

if TYPE_CHECKING:
    from framecdn.framestore.bucket import Bucket

ACCESS_FLUSH_SECONDS = 3600
#: What a read is recorded under: a study UID, or ``(key prefix, study UID)`` where several
#: sites share the bucket (each site's sweeper reads the markers under its own prefix).
Read = TypeVar("Read", bound=Hashable)


def encode_marker(study: str, last_access: float) -> bytes:
    return json.dumps({"study": study, "last_access": last_access}).encode()


def decode_marker(raw: bytes) -> tuple[str, float]:
    data = json.loads(raw)
    return str(data["study"]), float(data["last_access"])


class AccessRecorder(Generic[Read]):
    """In-memory record of study reads; says which studies are due for a marker write.

    ``record`` is called on every request and only touches a dict under a lock.
    ``due`` hands out the studies whose marker is older than ``flush_seconds``
    (or was never written by this process); the caller writes those markers.
    """

    def __init__(self, flush_seconds: float = ACCESS_FLUSH_SECONDS) -> None:
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._last_access: dict[Read, float] = {}
        self._last_flush: dict[Read, float] = {}

    def record(self, study: Read, now: float | None = None) -> None:
        """Note a read of ``study`` (the origin passes ``(key prefix, study UID)``)."""
        now = time.time() if now is None else now
        with self._lock:
            self._last_access[study] = now

    def due(self, now: float | None = None) -> Iterator[tuple[Read, float]]:
        """Studies whose marker should be (re)written now, marked as flushed."""
        now = time.time() if now is None else now
        with self._lock:
            ready = [
                (study, seen)
                for study, seen in self._last_access.items()
                if now - self._last_flush.get(study, float("-inf")) >= self.flush_seconds
            ]
            for study, _ in ready:
                self._last_flush[study] = now
        yield from ready


# Reading side (the sweeper) ------------------------------------------------


def list_marker_keys(bucket: Bucket, layout: KeyLayout) -> dict[str, str]:
    """Study UID -> marker key, for every marker under the prefix (one LIST per 1000)."""
    found: dict[str, str] = {}
    for obj in bucket.list(layout.access_prefix()):
        study = layout.parse_access_marker(obj.key)
        if study is not None:
            found[study] = obj.key
    return found


def read_marker(bucket: Bucket, key: str) -> float | None:
    """The last-access time in one marker; None if it is gone or holds no time.

    A marker the store fails to give (denied, timed out) raises: a ranking built
    without it could evict a study that is being read.
    """
    raw = bucket.get_or_none(key)
    if raw is None:
        return None
    try:
        return decode_marker(raw)[1]
    except (ValueError, KeyError, TypeError):
        return None


def read_last_access(bucket: Bucket, layout: KeyLayout, *, workers: int = 8) -> dict[str, float]:
    """Study UID -> last access (unix seconds), from every marker under the prefix."""
    keys = list_marker_keys(bucket, layout)
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        values = pool.map(lambda key: read_marker(bucket, key), keys.values())
        return {
            study: seen for study, seen in zip(keys, values, strict=True) if seen is not None
        }
