"""Erase now: delete every object of a study, series or instance, index first.

Used for a patient's erasure request, by the sweeper, and by tests. Each
instance's ``index.json`` goes in a first batch, so the origin counts the instance
as absent from that moment (an origin still holding the index in memory finds
frames missing and drops it); frames and metadata follow in batches of at most
1000 keys, the DeleteObjects limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from framecdn.framestore.access import access_key
from framecdn.framestore.keys import InstanceKey, KeyLayout, validate_uid
from framecdn.ingest.stats import StoredObject, group_by_prefix, list_objects

DELETE_BATCH = 1000


class EvictionError(RuntimeError):
    """The store refused to delete some keys."""


class NothingStored(LookupError):
    """No stored object matches the study, series or instance asked for."""


def delete_keys(client, bucket: str, keys: Sequence[str], *, batch_size: int = DELETE_BATCH) -> int:
    """Delete ``keys`` with batched DeleteObjects; raise if any key was refused."""
    failed: list[str] = []
    for start in range(0, len(keys), batch_size):
        batch = keys[start : start + batch_size]
        answer = client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
        )
        failed += [f"{e.get('Key')}: {e.get('Code')}" for e in answer.get("Errors", [])]
    if failed:
        raise EvictionError(f"{len(failed)} objects were not deleted: " + "; ".join(failed[:5]))
    return len(keys)


@dataclass(slots=True)
class EvictionReport:
    """What was (or, on a dry run, would be) removed."""

    instances: list[InstanceKey] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    markers: list[str] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        studies = sorted({key.study for key in self.instances})
        return (
            f"{verb} {len(self.instances)} instances of {len(studies)} studies: "
            f"{self.objects} objects, {self.bytes} bytes"
        )


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
    client,
    bucket: str,
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
        raise ValueError("name a study, a series or an instance")
    listed = list_objects(client, bucket, _search_prefix(layout, study, series))
    inventory = group_by_prefix(listed).get(layout.prefix)
    if inventory is None:
        return {}
    return {
        inst.key: inst.objects
        for inst in inventory.instances
        if _wanted(inst.key, study, series, instance)
    }


def evict_objects(
    client, bucket: str, found: dict[InstanceKey, list[StoredObject]], *, dry_run: bool = False
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
    indexes = [obj.key for obj in objects if obj.key.endswith("/index.json")]
    delete_keys(client, bucket, indexes)
    delete_keys(client, bucket, [obj.key for obj in objects if not obj.key.endswith("/index.json")])
    return report


def evict(
    client,
    bucket: str,
    layout: KeyLayout,
    *,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
    dry_run: bool = False,
) -> EvictionReport:
    """Erase a study, a series or an instance now. Raises NothingStored if nothing matches."""
    found = find_objects(client, bucket, layout, study=study, series=series, instance=instance)
    if not found:
        raise NothingStored("nothing stored matches " + _describe(study, series, instance))
    report = evict_objects(client, bucket, found, dry_run=dry_run)
    if series is None and instance is None:
        # A whole study is gone: its last-access marker is meaningless now.
        report.markers = _drop_markers(client, bucket, layout, {k.study for k in found}, dry_run)
    return report


def _drop_markers(
    client, bucket: str, layout: KeyLayout, studies: Iterable[str], dry_run: bool
) -> list[str]:
    keys = [access_key(layout, study) for study in sorted(studies)]
    if not dry_run and keys:
        delete_keys(client, bucket, keys)  # deleting a missing key is not an error in S3
    return keys


def _describe(study: str | None, series: str | None, instance: str | None) -> str:
    named = (("study", study), ("series", series), ("instance", instance))
    return ", ".join(f"{name} {uid}" for name, uid in named if uid)
