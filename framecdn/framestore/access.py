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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from framecdn.framestore.keys import KeyLayout, is_valid_uid, validate_uid

ACCESS_FLUSH_SECONDS = 3600


def access_prefix(layout: KeyLayout) -> str:
    return f"{layout.prefix}access/studies/"


def access_key(layout: KeyLayout, study: str) -> str:
    return f"{access_prefix(layout)}{validate_uid(study, what='StudyInstanceUID')}"


def encode_marker(study: str, last_access: float) -> bytes:
    return json.dumps({"study": study, "last_access": last_access}).encode()


def decode_marker(raw: bytes) -> tuple[str, float]:
    data = json.loads(raw)
    return str(data["study"]), float(data["last_access"])


class AccessRecorder:
    """In-memory record of study reads; says which studies are due for a marker write.

    ``record`` is called on every request and only touches a dict under a lock.
    ``due`` hands out the studies whose marker is older than ``flush_seconds``
    (or was never written by this process); the caller writes those markers.
    """

    def __init__(self, flush_seconds: float = ACCESS_FLUSH_SECONDS) -> None:
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._last_access: dict[str, float] = {}
        self._last_flush: dict[str, float] = {}

    def record(self, study: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._last_access[study] = now

    def due(self, now: float | None = None) -> Iterator[tuple[str, float]]:
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


def study_from_marker_key(layout: KeyLayout, key: str) -> str | None:
    """The study a marker key belongs to, or None for any other key."""
    prefix = access_prefix(layout)
    if not key.startswith(prefix):
        return None
    study = key[len(prefix) :]
    return study if is_valid_uid(study) else None


def list_marker_keys(client, bucket: str, layout: KeyLayout) -> dict[str, str]:
    """Study UID -> marker key, for every marker under the prefix (one LIST per 1000)."""
    found: dict[str, str] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=access_prefix(layout)):
        for obj in page.get("Contents", []):
            study = study_from_marker_key(layout, obj["Key"])
            if study is not None:
                found[study] = obj["Key"]
    return found


def read_marker(client, bucket: str, key: str) -> float | None:
    """The last-access time stored in one marker, or None if it vanished or is unreadable."""
    try:
        raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    try:
        return decode_marker(raw)[1]
    except (ValueError, KeyError, TypeError):
        return None


def read_last_access(
    client, bucket: str, layout: KeyLayout, *, workers: int = 8
) -> dict[str, float]:
    """Study UID -> last access (unix seconds), from every marker under the prefix."""
    keys = list_marker_keys(client, bucket, layout)
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        values = pool.map(lambda key: read_marker(client, bucket, key), keys.values())
        return {
            study: seen for study, seen in zip(keys, values, strict=True) if seen is not None
        }
