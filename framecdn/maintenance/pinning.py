"""Pinning: retag a study's (or series') objects so the expiry rule no longer matches them.

The expiry rule filters on ``framecdn-retention=cache``; an object tagged
``pinned`` is out of its reach while the rule itself stays untouched. Other tags
on an object are kept. Frames and metadata are retagged first and each index
last, because the index's tag is what stats and the sweeper read for the instance.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout, is_index_key
from framecdn.framestore.retention import CACHE, PINNED
from framecdn.maintenance.eviction import NothingStored, find_objects


@dataclass(frozen=True, slots=True)
class PinReport:
    value: str
    instances: int
    objects: int
    bytes: int


def pin(
    bucket: Bucket,
    layout: KeyLayout,
    study: str,
    *,
    series: str | None = None,
    unpin: bool = False,
    workers: int = 8,
) -> PinReport:
    """Tag every object of the study (or series) ``pinned``, or back to ``cache``."""
    value = CACHE if unpin else PINNED
    found = find_objects(bucket, layout, study=study, series=series)
    if not found:
        what = f"study {study}" + (f" series {series}" if series else "")
        raise NothingStored(f"nothing stored for {what}")
    objects = [obj for group in found.values() for obj in group]
    body = [obj.key for obj in objects if not is_index_key(obj.key)]
    indexes = [obj.key for obj in objects if is_index_key(obj.key)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for keys in (body, indexes):
            list(pool.map(lambda key: bucket.set_retention(key, value), keys))
    return PinReport(value, len(found), len(objects), sum(obj.size for obj in objects))
