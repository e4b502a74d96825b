"""Finding an instance: its ``index.json``, cached in memory, with the miss seam.

The index is the commit marker (no index = not there) and holds every frame's size
and checksum, so once it is cached a frame request needs no S3 call but the frame's
own GET. Entries live ``index_cache_seconds`` (Settings).

Objects of one instance can expire a little apart. When the store says a frame (or
the metadata) of the generation an index names is missing (its own "no such key",
:class:`~framecdn.errors.ObjectMissing`) or not the size the index lists, the
instance is half evicted: its index is marked *stale* and ignored from then on, so
every frame of it answers 404 (or is filled from the upstream), not just the missing
one. Nothing else condemns an index: a store that stalls, fails or cuts a body off
did not say anything about the objects, and the next request simply reads again.

A stale mark names the write it condemns (:attr:`InstanceIndex.identity`), so a
re-ingested instance (a new generation, a new index) is served again at once: this
is also how an origin holding the index of a replaced instance, whose old generation
is gone, moves on to the new one. The sweeper and ``framecdn verify`` remove a
stale index from the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.origin.cache import TTLCache
from framecdn.origin.metrics import Metrics
from framecdn.origin.scope import ReadScope
from framecdn.origin.storage import ObjectMissing, ObjectStore

#: Cache key of one instance under one layout (several sites may share a bucket).
Located = tuple[str, InstanceKey]


@dataclass(frozen=True, slots=True)
class Found:
    """A committed instance: the layout (site) it was found under, and its index."""

    layout: KeyLayout
    index: InstanceIndex

    @property
    def key(self) -> InstanceKey:
        return self.index.key


class InstanceIndexes:
    """Committed instances' indexes, cached; stale (half-evicted) ones remembered."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.metrics = metrics
        entries = settings.index_cache_entries
        self.cache: TTLCache[Located, InstanceIndex] = TTLCache(
            entries, settings.index_cache_seconds
        )
        self.stale: TTLCache[Located, str] = TTLCache(entries, settings.stale_index_seconds)

    async def _load(self, key: InstanceKey, layout: KeyLayout) -> InstanceIndex | None:
        try:
            raw = await self.store.get_bytes(layout.index(key))
        except ObjectMissing:
            return None
        try:
            index = InstanceIndex.from_json(raw)
        except InvalidIndex:
            return None  # unreadable commit marker: treat as not committed
        if self.stale.get((layout.prefix, key)) == index.identity:
            return None  # the index of a half-evicted instance: not there any more
        return index

    async def get(self, key: InstanceKey, layout: KeyLayout) -> InstanceIndex | None:
        """The instance's index under ``layout``, or None when it is not committed there."""
        located = (layout.prefix, key)
        cached = self.cache.get(located)
        if cached is not None:
            self.metrics.index_cache.labels("hit").inc()
            return cached
        self.metrics.index_cache.labels("miss").inc()
        return await self.cache.get_or_load(located, lambda: self._load(key, layout))

    async def locate(self, key: InstanceKey, scope: ReadScope) -> Found | None:
        """The instance under the first of the scope's layouts that holds it, or None.

        A study outside the scope is looked for nowhere, so it is "not found" exactly
        like a study that does not exist.
        """
        found: Found | None = None
        for layout in scope.layouts_for(key.study):
            index = await self.get(key, layout)
            if index is not None:
                found = Found(layout, index)
                break
        self.metrics.lookups.labels("hit" if found is not None else "miss").inc()
        return found

    def forget(self, key: InstanceKey, layout: KeyLayout) -> None:
        """Drop a cached index, so the next request reads it from the bucket again."""
        self.cache.drop((layout.prefix, key))

    def mark_stale(self, found: Found) -> None:
        """The store says an object of this index's generation is missing or not as
        indexed: ignore this index (this write of the instance) from now on.

        Call it only on the store's own word (ObjectMissing, a size it announced), never
        on a timeout or an unreachable store.
        """
        located = (found.layout.prefix, found.key)
        self.stale.put(located, found.index.identity)
        self.cache.drop(located)
