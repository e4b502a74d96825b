"""Writes study last-access markers for the sweeper, in the background.

Requests only call ``AccessRecorder.record`` (a dict write); this task wakes up
every ``interval`` seconds and writes the markers ``recorder.due()`` hands out,
which is at most once per study per flush period. Reads are recorded as
``(key prefix, study)``: a study read from a site's prefix gets its marker there, where
that site's sweeper looks.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Scope

from framecdn.framestore.access import AccessRecorder, encode_marker
from framecdn.framestore.keys import KeyLayout
from framecdn.origin.storage import ObjectStore, S3Error

log = logging.getLogger(__name__)


#: The origin's reads: ``(key prefix of the site read from, study UID)``.
SiteReads = AccessRecorder[tuple[str, str]]

#: ASGI scope key: the layout (site) a request's answer was read from, when one was.
SERVED_FROM = "framecdn.served_from"


def served_from(scope: Scope, layout: KeyLayout) -> None:
    """Note that this request's answer comes from the bucket under ``layout``."""
    scope[SERVED_FROM] = layout


def record_read(recorder: SiteReads, scope: Scope, study: str) -> None:
    """Record a served read of ``study`` under the prefix it was read from.

    Answers from the upstream (or from several sites at once) note no layout and leave
    no marker: the sweeper ranks what it has not seen read by when it was written.
    """
    layout = scope.get(SERVED_FROM)
    if isinstance(layout, KeyLayout):
        recorder.record((layout.prefix, study))


async def flush_once(store: ObjectStore, recorder: SiteReads) -> int:
    """Write every due marker now; returns how many were written."""
    written = 0
    for read, last_access in list(recorder.due()):
        prefix, study = read
        try:
            await store.put_bytes(
                KeyLayout(prefix).access_marker(study),
                encode_marker(study, last_access),
                "application/json",
            )
            written += 1
        except S3Error as exc:
            log.warning("access marker for study %s not written: %s", study, exc)
    return written


async def flush_forever(store: ObjectStore, recorder: SiteReads, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await flush_once(store, recorder)
        except Exception:  # keep the task alive whatever happens
            log.exception("access marker flush failed")
