"""The seam for filling a miss from an upstream PACS (not built yet).

When an instance has no index in the bucket, the origin asks its :class:`Upstream`
for one. :class:`NoUpstream` says "not here", which makes the request a 404; a
later implementation can proxy ``FRAMECDN_UPSTREAM_URL`` and ingest behind it
(that belongs to ``framecdn.ingest``, reached through the CLI, not imported here).
"""

from __future__ import annotations

from typing import Protocol

from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey


class Upstream(Protocol):
    async def fill(self, key: InstanceKey) -> InstanceIndex | None:
        """Bring the instance into the bucket and return its index, or None."""


class NoUpstream:
    """No upstream configured: every miss is a 404."""

    async def fill(self, key: InstanceKey) -> InstanceIndex | None:
        return None
