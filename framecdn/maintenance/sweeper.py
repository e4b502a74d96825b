"""The access-aware sweeper: evict the least recently read studies until under a budget.

Lifecycle expiry counts from the write, so a study read every day still expires.
The origin leaves a last-access marker per study (at most one write per study per
hour, see ``framestore.access``); the sweeper, run on a schedule, reads them and:

1. removes half-evicted instances (an index whose frames or metadata are gone),
   index first, orphans without an index older than a grace period (an ingest
   that died; a running ingest is younger than the grace), and, of instances that
   are whole, the generations their index does not name, older than the same grace
   (a replacement that died, or an old version left behind; ``maintenance.leftovers``);
2. evicts whole studies, least recently used first, until the prefix's usage is at
   most ``max_bytes``. A study's recency is the later of its last access and its
   last ingest, so a never-read study ranks by when it was written. Only studies
   whose every instance is known to be tagged ``cache`` are evicted: pinned ones
   stay, and so does any study whose tags could not be read (it is *skipped*, and
   the report says why);
3. drops markers of studies that are no longer stored;
4. optionally refreshes the expiry clock of studies read since they were written,
   by copying each object onto itself, where the store makes that safe.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from framecdn.framestore.access import list_marker_keys, read_last_access
from framecdn.framestore.bucket import Bucket, StoredObject
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.maintenance.eviction import evict_objects
from framecdn.maintenance.inventory import PrefixInventory, StudyInventory, take_inventory
from framecdn.maintenance.leftovers import dead_leftovers, remove_leftovers

ORPHAN_GRACE = timedelta(days=1)

#: Server header -> can a copy onto itself reset the lifecycle clock safely?
REFRESH_SAFE = {
    "AmazonS3": True,  # Last-Modified is reset; Days count from it
    "MinIO": True,  # same
    "SeaweedFS": False,  # see docs/operations.md: not a safe refresh there
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A study the sweeper may evict, with what its rank is based on."""

    study: str
    bytes: int
    recency: float  # unix seconds: later of last access and last ingest
    last_access: float | None
    pinned: bool
    evictable: bool = True  # every instance known to be tagged cache


@dataclass(slots=True)
class SweepReport:
    usage_before: int = 0
    usage_after: int = 0
    max_bytes: int | None = None
    evicted: list[Candidate] = field(default_factory=list)
    repaired: list[InstanceKey] = field(default_factory=list)
    orphans: list[InstanceKey] = field(default_factory=list)
    #: Instances whose unnamed generations (older than the grace) were removed.
    leftovers: list[InstanceKey] = field(default_factory=list)
    markers_removed: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    refresh_note: str = ""
    pinned_bytes: int = 0
    kept_bytes: int = 0  # bytes a sweep may not evict: pinned, untagged or unreadable
    skipped: dict[str, str] = field(default_factory=dict)  # study -> why it was not touched
    dry_run: bool = False

    @property
    def over_budget(self) -> bool:
        return self.max_bytes is not None and self.usage_after > self.max_bytes

    @property
    def ok(self) -> bool:
        """Nothing skipped and under budget: the exit status a schedule can alert on."""
        return not self.skipped and not self.over_budget


def rank(inventory: PrefixInventory, last_access: dict[str, float]) -> list[Candidate]:
    """Every stored study, least recently used first."""
    candidates = []
    for study in inventory.studies.values():
        seen = last_access.get(study.study)
        recency = max(seen or 0.0, study.written.timestamp())
        candidates.append(
            Candidate(study.study, study.bytes, recency, seen, study.pinned, study.cached)
        )
    return sorted(candidates, key=lambda c: (c.recency, c.study))


def choose(candidates: list[Candidate], usage: int, max_bytes: int) -> list[Candidate]:
    """The least recently used evictable studies whose removal brings usage to max_bytes."""
    chosen: list[Candidate] = []
    for candidate in candidates:
        if usage <= max_bytes:
            break
        if candidate.pinned or not candidate.evictable:
            continue
        chosen.append(candidate)
        usage -= candidate.bytes
    return chosen


def refresh_support(bucket: Bucket) -> tuple[bool, str]:
    """Whether a self-copy safely restarts the lifecycle clock on this store, and why."""
    server = bucket.server()
    for name, safe in REFRESH_SAFE.items():
        if server.startswith(name):
            return safe, f"store is {server}"
    return False, f"store {server or '(no Server header)'} is not known to reset expiry on copy"


def refresh_study(bucket: Bucket, study: StudyInventory, *, workers: int = 8) -> int:
    """Copy each cache-tagged object of the study onto itself, indexes last."""
    instances = [i for i in study.instances.values() if i.cached]
    body = [o.key for i in instances for o in i.objects if i.index_object is not o]
    indexes = [i.index_object.key for i in instances if i.index_object is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for keys in (body, indexes):
            list(pool.map(bucket.copy_in_place, keys))
    return len(body) + len(indexes)


def sweep(
    bucket: Bucket,
    layout: KeyLayout,
    *,
    max_bytes: int | None = None,
    refresh_after: timedelta | None = None,
    force_refresh: bool = False,
    orphan_grace: timedelta = ORPHAN_GRACE,
    dry_run: bool = False,
    now: float | None = None,
    workers: int = 8,
) -> SweepReport:
    """One sweeper run over one prefix (see the module docstring for the steps)."""
    now = time.time() if now is None else now
    report = SweepReport(max_bytes=max_bytes, dry_run=dry_run)
    inventory = take_inventory(bucket, layout, workers=workers)
    report.usage_before = inventory.bytes
    report.skipped = inventory.unreadable
    # Read before anything is deleted: a marker the store fails to give stops the run here.
    last_access = read_last_access(bucket, layout, workers=workers)

    _repair(bucket, layout, inventory, report, now - orphan_grace.total_seconds())
    _evict_over_budget(bucket, inventory, last_access, report)
    _remove_stale_markers(bucket, layout, inventory, report)
    if refresh_after is not None:
        _refresh(bucket, inventory, last_access, report, refresh_after, force_refresh, now,
                 workers)
    report.usage_after = inventory.bytes
    return report


def _repair(
    bucket: Bucket, layout: KeyLayout, inventory: PrefixInventory, report: SweepReport,
    orphaned_before: float,
) -> None:
    """1. Half-evicted instances and dead ingests (never in a study whose tags are unknown)."""
    dry_run = report.dry_run
    broken: dict[InstanceKey, list[StoredObject]] = {}
    oldest_orphan = datetime.fromtimestamp(orphaned_before, UTC)
    for instance in inventory.instances:
        if instance.key.study in report.skipped:
            continue
        if instance.index_object is not None and instance.complete is False:
            report.repaired.append(instance.key)
            broken[instance.key] = instance.objects
        elif instance.index_object is None and instance.written < oldest_orphan:
            report.orphans.append(instance.key)
            broken[instance.key] = instance.objects
        elif instance.complete:
            doomed = dead_leftovers(instance, oldest_orphan)
            if remove_leftovers(bucket, layout, instance, doomed, dry_run=dry_run):
                report.leftovers.append(instance.key)
    if broken:
        evict_objects(bucket, broken, dry_run=dry_run)
        inventory.forget(broken)


def _evict_over_budget(
    bucket: Bucket, inventory: PrefixInventory, last_access: dict[str, float], report: SweepReport
) -> None:
    """2. Least recently used studies until under budget."""
    ranked = rank(inventory, last_access)
    report.pinned_bytes = sum(study.pinned_bytes for study in inventory.studies.values())
    report.kept_bytes = sum(c.bytes for c in ranked if c.pinned or not c.evictable)
    if report.max_bytes is None:
        return
    report.evicted = choose(ranked, inventory.bytes, report.max_bytes)
    for candidate in report.evicted:
        study = inventory.studies[candidate.study]
        found = {key: inst.objects for key, inst in study.instances.items()}
        evict_objects(bucket, found, dry_run=report.dry_run)
        del inventory.studies[candidate.study]


def _remove_stale_markers(
    bucket: Bucket, layout: KeyLayout, inventory: PrefixInventory, report: SweepReport
) -> None:
    """3. Markers of studies that are gone."""
    stale = [
        key
        for study, key in list_marker_keys(bucket, layout).items()
        if study not in inventory.studies
    ]
    if stale and not report.dry_run:
        bucket.delete(stale)
    report.markers_removed = stale


def _refresh(
    bucket: Bucket,
    inventory: PrefixInventory,
    last_access: dict[str, float],
    report: SweepReport,
    refresh_after: timedelta,
    force_refresh: bool,
    now: float,
    workers: int,
) -> None:
    """4. Refresh what is read but getting old."""
    safe, why = refresh_support(bucket)
    if not (safe or force_refresh):
        report.refresh_note = f"refresh skipped: {why} (see docs/operations.md)"
        return
    report.refresh_note = why
    for study in inventory.studies.values():
        if _wants_refresh(study, last_access.get(study.study), refresh_after, now):
            if not report.dry_run:
                refresh_study(bucket, study, workers=workers)
            report.refreshed.append(study.study)


def _wants_refresh(
    study: StudyInventory, seen: float | None, refresh_after: timedelta, now: float
) -> bool:
    """Read since its oldest object was written, and that object is older than refresh_after."""
    if seen is None or not study.cached:
        return False
    oldest = min(o.last_modified for i in study.instances.values() for o in i.objects)
    return seen > oldest.timestamp() and now - oldest.timestamp() >= refresh_after.total_seconds()
