"""Removing generations no index names, once they are provably dead.

A generation (one write of an instance, ``framestore.keys``) that the instance's
index does not name is a leftover: a replacement that died before its swap, an old
version whose removal failed, a failed ingest. It may also be an ingest *still
running*, which is why only generations whose newest object is older than a grace
period are removed, and why the index is read again right before: a generation it
names now is never touched. Nothing is locked; the origin goes on serving the
generation the index names.
"""

from __future__ import annotations

from datetime import datetime

from framecdn.errors import ObjectMissing
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import KeyLayout
from framecdn.maintenance.inventory import GenerationInventory, InstanceInventory


def dead_leftovers(
    instance: InstanceInventory, older_than: datetime
) -> list[GenerationInventory]:
    """The instance's leftover generations last written before ``older_than``."""
    return [g for g in instance.leftovers if g.written < older_than]


def remove_leftovers(
    bucket: Bucket,
    layout: KeyLayout,
    instance: InstanceInventory,
    doomed: list[GenerationInventory],
    *,
    dry_run: bool = False,
) -> list[GenerationInventory]:
    """Delete ``doomed`` generations the index still does not name; returns those removed.

    The index is read again first. If it appeared or went away since the inventory,
    nothing is removed (the next run looks again); if it names one of them now (a
    replacement committed it), that one is kept.
    """
    if not doomed:
        return []
    try:
        raw: bytes | None = bucket.get(layout.index(instance.key))
    except ObjectMissing:
        raw = None
    if (raw is None) != (instance.index_object is None):
        return []
    if raw is not None:
        try:
            named = InstanceIndex.from_json(raw).generation
        except InvalidIndex:
            return []  # no telling what it names: touch nothing
        doomed = [g for g in doomed if g.generation != named]
    if not dry_run and doomed:
        bucket.delete([obj.key for g in doomed for obj in g.objects])
        for generation in doomed:
            instance.drop_generation(generation.generation)
    return doomed
