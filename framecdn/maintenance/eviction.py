"""Erase now: delete every object of a study, series or instance, index first.

Used for a patient's erasure request, by the sweeper, and by tests. Each
instance's ``index.json`` goes in a first batch, so the origin counts the instance
as absent from that moment (an origin still holding the index in memory finds
frames missing and drops it); frames and metadata follow in batches of at most
1000 keys, the DeleteObjects limit (:meth:`Bucket.delete`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from framecdn.errors import FramecdnError, UsageError
from framecdn.framestore.bucket import Bucket, StoredObject
from framecdn.framestore.keys import InstanceKey, KeyLayout, is_index_key, validate_uid
from framecdn.maintenance.inventory import group_by_prefix


class NothingStored(FramecdnError):
    """No stored object matches the study, series or instance asked for."""


@dataclass(slots=True)
class EvictionReport:
    """What was (or, on a dry run, would be) removed."""

    instances: list[InstanceKey] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    markers: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def studies(self) -> int:
        return len({key.study for key in self.instances})


def _search_prefix(layout: KeyLayout, study: str | None, series: str | None) -> str:
    if study and series:
        return layout.series_prefix(study, series)
    if study:
        return layout.study_prefix(study)
    return layout.all_studies()


def _wanted(key: InstanceKey, study: str | None, series: str | None, instance: str | None) -> bool:
    return (
        (study is None or key.study == study)
        and (series is None or key.series == series)
        and (instance is None or key.instance == instance)
    )


def find_objects(
    bucket: Bucket,
    layout: KeyLayout,
    *,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
) -> dict[InstanceKey, list[StoredObject]]:
    """The objects of every matching instance. Without a study the whole prefix is listed."""
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    for uid, what in zip((study, series, instance), names, strict=True):
        if uid is not None:
            validate_uid(uid, what=what)
    if study is None and series is None and instance is None:
        raise UsageError("name a study, a series (--series) or an instance (--instance)")
    listed = bucket.list(_search_prefix(layout, study, series))
    inventory = group_by_prefix(listed).get(layout.prefix)
    if inventory is None:
        return {}
    return {
        inst.key: inst.objects
        for inst in inventory.instances
        if _wanted(inst.key, study, series, instance)
    }


def evict_objects(
    bucket: Bucket, found: dict[InstanceKey, list[StoredObject]], *, dry_run: bool = False
) -> EvictionReport:
    """Delete the given instances' objects: every index first, then everything else."""
    objects = [obj for group in found.values() for obj in group]
    report = EvictionReport(
        instances=sorted(found, key=lambda k: (k.study, k.series, k.instance)),
        objects=len(objects),
        bytes=sum(obj.size for obj in objects),
        dry_run=dry_run,
    )
    if dry_run:
        return report
    indexes = [obj.key for obj in objects if is_index_key(obj.key)]
    bucket.delete(indexes)
    bucket.delete([obj.key for obj in objects if not is_index_key(obj.key)])
    return report


def evict(
    bucket: Bucket,
    layout: KeyLayout,
    *,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
    dry_run: bool = False,
) -> EvictionReport:
    """Erase a study, a series or an instance now. Raises NothingStored if nothing matches."""
    found = find_objects(bucket, layout, study=study, series=series, instance=instance)
    if not found:
        raise NothingStored("nothing stored matches " + _describe(study, series, instance))
    report = evict_objects(bucket, found, dry_run=dry_run)
    if series is None and instance is None:
        # A whole study is gone: its last-access marker is meaningless now.
        report.markers = drop_markers(bucket, layout, {k.study for k in found}, dry_run=dry_run)
    return report


def drop_markers(
    bucket: Bucket, layout: KeyLayout, studies: Iterable[str], *, dry_run: bool = False
) -> list[str]:
    """Delete the last-access markers of these studies (a missing one is no error)."""
    keys = [layout.access_marker(study) for study in sorted(studies)]
    if not dry_run and keys:
        bucket.delete(keys)
    return keys


def _describe(study: str | None, series: str | None, instance: str | None) -> str:
    named = (("study", study), ("series", series), ("instance", instance))
    return ", ".join(f"{name} {uid}" for name, uid in named if uid)
