"""Finding an instance: its ``index.json``, cached in memory, with the miss seam.

The index is the commit marker (no index = not there) and holds every frame's size
and checksum, so once it is cached a frame request needs no S3 call but the frame's
own GET. Entries live ``index_cache_seconds`` (Settings).

Objects of one instance can expire a little apart. When a frame (or the metadata)
turns out missing, the instance is half evicted: its index is marked *stale* and
ignored from then on, so every frame of it answers 404 (or is filled from the
upstream), not just the missing one. A stale mark names the index it condemns (by
its generation), so a re-ingested instance is served again at once; the sweeper
deletes the stale index from the bucket.
"""

from __future__ import annotations

from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.origin.cache import TTLCache
from framecdn.origin.metrics import Metrics
from framecdn.origin.storage import ObjectMissing, ObjectStore
from framecdn.origin.upstream import NoUpstream, Upstream


class InstanceIndexes:
    """Committed instances' indexes, cached; stale (half-evicted) ones remembered."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        layout: KeyLayout,
        metrics: Metrics,
        upstream: Upstream | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.metrics = metrics
        self.upstream: Upstream = upstream or NoUpstream()
        entries = settings.index_cache_entries
        self.cache: TTLCache[InstanceKey, InstanceIndex] = TTLCache(
            entries, settings.index_cache_seconds
        )
        self.stale: TTLCache[InstanceKey, str] = TTLCache(entries, settings.stale_index_seconds)

    async def _load(self, key: InstanceKey) -> InstanceIndex | None:
        try:
            raw = await self.store.get_bytes(self.layout.index(key))
        except ObjectMissing:
            return None
        try:
            index = InstanceIndex.from_json(raw)
        except InvalidIndex:
            return None  # unreadable commit marker: treat as not committed
        if self.stale.get(key) == index.generation:
            return None  # the index of a half-evicted instance: not there any more
        return index

    async def get(self, key: InstanceKey) -> InstanceIndex | None:
        """The instance's index, or None (after giving the upstream its chance)."""
        cached = self.cache.get(key)
        if cached is not None:
            self.metrics.index_cache.labels("hit").inc()
            self.metrics.lookups.labels("hit").inc()
            return cached
        self.metrics.index_cache.labels("miss").inc()
        index = await self.cache.get_or_load(key, lambda: self._load(key))
        if index is None:
            index = await self.upstream.fill(key)
            if index is not None:
                self.metrics.upstream_fills.inc()
                self.cache.put(key, index)
        self.metrics.lookups.labels("hit" if index is not None else "miss").inc()
        return index

    def forget(self, key: InstanceKey) -> None:
        """Drop a cached index, so the next request reads it from the bucket again."""
        self.cache.drop(key)

    def mark_stale(self, key: InstanceKey, index: InstanceIndex) -> None:
        """An object of this instance is missing: ignore this index from now on."""
        self.stale.put(key, index.generation)
        self.cache.drop(key)
