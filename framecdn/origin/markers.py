"""Writes study last-access markers for the sweeper, in the background.

Requests only call ``AccessRecorder.record`` (a dict write); this task wakes up
every ``interval`` seconds and writes the markers ``recorder.due()`` hands out,
which is at most once per study per flush period.
"""

from __future__ import annotations

import asyncio
import logging

from framecdn.framestore.access import AccessRecorder, encode_marker
from framecdn.framestore.keys import KeyLayout
from framecdn.origin.storage import ObjectStore, S3Error

log = logging.getLogger(__name__)


async def flush_once(store: ObjectStore, layout: KeyLayout, recorder: AccessRecorder) -> int:
    """Write every due marker now; returns how many were written."""
    written = 0
    for study, last_access in list(recorder.due()):
        try:
            await store.put_bytes(
                layout.access_marker(study), encode_marker(study, last_access), "application/json"
            )
            written += 1
        except S3Error as exc:
            log.warning("access marker for study %s not written: %s", study, exc)
    return written


async def flush_forever(
    store: ObjectStore, layout: KeyLayout, recorder: AccessRecorder, interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await flush_once(store, layout, recorder)
        except Exception:  # keep the task alive whatever happens
            log.exception("access marker flush failed")
