"""What framecdn has in the bucket: per prefix, per study, per instance; and when it goes.

One LIST pass gives every object's size and age. Two small reads per instance
(the index and its tags) say whether the instance is complete and whether it is
pinned: pinning retags a whole instance with its index last, so the index's tag
speaks for the instance. ``framecdn stats`` prints this; the sweeper plans with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import ClientError

from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.retention import PINNED, RETENTION_TAG
from framecdn.ingest.lifecycle import Rule, get_rules

FORECAST_DAYS = (1, 7, 30)

_OBJECT_KEY = re.compile(
    r"^(?P<prefix>(?:[^/]+/)*?)studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)"
    r"/instances/(?P<instance>[0-9.]+)/(?P<part>frames/(?P<frame>[0-9]+)|metadata|index\.json)$"
)


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime


@dataclass(slots=True)
class InstanceInventory:
    """The objects of one instance as found in the bucket."""

    key: InstanceKey
    objects: list[StoredObject] = field(default_factory=list)
    frames: set[int] = field(default_factory=set)
    has_metadata: bool = False
    index_object: StoredObject | None = None
    retention: str | None = None  # our tag's value on the index (or first object)
    expected_frames: int | None = None  # NumberOfFrames from index.json

    @property
    def bytes(self) -> int:
        return sum(obj.size for obj in self.objects)

    @property
    def written(self) -> datetime:
        """When ingest finished: the index is written last (else the newest object)."""
        if self.index_object is not None:
            return self.index_object.last_modified
        return max(obj.last_modified for obj in self.objects)

    @property
    def pinned(self) -> bool:
        return self.retention == PINNED

    @property
    def complete(self) -> bool | None:
        """True when index, metadata and every frame are there; None when not checked."""
        if self.index_object is None or not self.has_metadata:
            return False
        if self.expected_frames is None:
            return None
        return self.frames == set(range(1, self.expected_frames + 1))


@dataclass(slots=True)
class StudyInventory:
    study: str
    instances: dict[InstanceKey, InstanceInventory] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(inst.bytes for inst in self.instances.values())

    @property
    def object_count(self) -> int:
        return sum(len(inst.objects) for inst in self.instances.values())

    @property
    def written(self) -> datetime:
        return max(inst.written for inst in self.instances.values())

    @property
    def pinned(self) -> bool:
        return any(inst.pinned for inst in self.instances.values())

    @property
    def pinned_bytes(self) -> int:
        return sum(inst.bytes for inst in self.instances.values() if inst.pinned)


@dataclass(slots=True)
class PrefixInventory:
    """Every framecdn object under one key prefix, grouped by study and instance."""

    layout: KeyLayout
    studies: dict[str, StudyInventory] = field(default_factory=dict)

    def add(self, key: InstanceKey, obj: StoredObject, part: str, frame: str | None) -> None:
        study = self.studies.setdefault(key.study, StudyInventory(key.study))
        instance = study.instances.setdefault(key, InstanceInventory(key))
        instance.objects.append(obj)
        if frame is not None:
            instance.frames.add(int(frame))
        elif part == "metadata":
            instance.has_metadata = True
        elif part == "index.json":
            instance.index_object = obj

    @property
    def instances(self) -> Iterator[InstanceInventory]:
        for study in self.studies.values():
            yield from study.instances.values()

    @property
    def bytes(self) -> int:
        return sum(study.bytes for study in self.studies.values())

    @property
    def object_count(self) -> int:
        return sum(study.object_count for study in self.studies.values())


# Building the inventory ------------------------------------------------------


def list_objects(client, bucket: str, prefix: str) -> Iterator[StoredObject]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield StoredObject(obj["Key"], int(obj["Size"]), obj["LastModified"])


def group_by_prefix(objects: Iterable[StoredObject]) -> dict[str, PrefixInventory]:
    """Sort listed objects into per-prefix inventories; keys that are not ours are skipped."""
    found: dict[str, PrefixInventory] = {}
    for obj in objects:
        match = _OBJECT_KEY.match(obj.key)
        if match is None:
            continue
        try:
            key = InstanceKey(match["study"], match["series"], match["instance"])
            inventory = found.get(match["prefix"])
            if inventory is None:
                inventory = found[match["prefix"]] = PrefixInventory(KeyLayout(match["prefix"]))
        except ValueError:
            continue
        inventory.add(key, obj, match["part"], match["frame"])
    return found


def _retention_of(client, bucket: str, key: str) -> str | None:
    try:
        tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    except ClientError:
        return None  # gone since the listing
    return next((t["Value"] for t in tags if t["Key"] == RETENTION_TAG), None)


def _expected_frames(client, bucket: str, key: str) -> int | None:
    try:
        raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return InstanceIndex.from_json(raw).number_of_frames
    except (ClientError, InvalidIndex):
        return None


def read_details(client, bucket: str, inventory: PrefixInventory, *, workers: int = 8) -> None:
    """Fill in each instance's retention tag and (when indexed) its expected frame count."""

    def one(instance: InstanceInventory) -> None:
        probe = instance.index_object or min(instance.objects, key=lambda o: o.key)
        instance.retention = _retention_of(client, bucket, probe.key)
        if instance.index_object is not None:
            instance.expected_frames = _expected_frames(client, bucket, instance.index_object.key)

    instances = list(inventory.instances)
    if not instances:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(instances)))) as pool:
        list(pool.map(one, instances))


def take_inventory(
    client, bucket: str, layout: KeyLayout, *, details: bool = True, workers: int = 8
) -> PrefixInventory:
    """The inventory of one prefix (its ``studies/`` tree)."""
    grouped = group_by_prefix(list_objects(client, bucket, layout.all_studies()))
    inventory = grouped.get(layout.prefix, PrefixInventory(layout))
    if details:
        read_details(client, bucket, inventory, workers=workers)
    return inventory


def take_bucket_inventory(
    client, bucket: str, *, details: bool = True, workers: int = 8
) -> dict[str, PrefixInventory]:
    """Inventories of every framecdn prefix in the bucket (one LIST of the whole bucket)."""
    grouped = group_by_prefix(list_objects(client, bucket, ""))
    if details:
        for inventory in grouped.values():
            read_details(client, bucket, inventory, workers=workers)
    return grouped


# When things expire ----------------------------------------------------------------


def _rule_filter(rule: Rule) -> dict[str, Any]:
    flt = rule.get("Filter")
    if flt is None:
        return {"Prefix": rule.get("Prefix", "")}
    inner = dict(flt.get("And", flt))
    if "Tag" in flt:
        inner["Tags"] = [flt["Tag"]]
    return inner


def _next_midnight(moment: datetime) -> datetime:
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == moment else day + timedelta(days=1)


def expires_at(obj: StoredObject, retention: str | None, rules: list[Rule]) -> datetime | None:
    """When the rules delete this object, or None if none applies.

    Days count from the write, rounded up to the next midnight UTC as AWS does
    (SeaweedFS deletes at its next daily pass after that). Only our retention tag
    is known per instance, so a rule that needs any other tag is taken not to match.
    """
    due: datetime | None = None
    for rule in rules:
        expiration = rule.get("Expiration")
        if rule.get("Status") != "Enabled" or not expiration:
            continue
        flt = _rule_filter(rule)
        if not obj.key.startswith(flt.get("Prefix") or ""):
            continue
        tags = flt.get("Tags", [])
        if any(t["Key"] != RETENTION_TAG or t["Value"] != retention for t in tags):
            continue
        if "ObjectSizeGreaterThan" in flt and not obj.size > int(flt["ObjectSizeGreaterThan"]):
            continue
        if "ObjectSizeLessThan" in flt and not obj.size < int(flt["ObjectSizeLessThan"]):
            continue
        if "Days" in expiration:
            when = _next_midnight(obj.last_modified + timedelta(days=int(expiration["Days"])))
        elif "Date" in expiration:
            when = expiration["Date"]
            if not isinstance(when, datetime):
                when = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        else:
            continue
        due = when if due is None else min(due, when)
    return due


# The report ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudyAge:
    study: str
    written: datetime


@dataclass(frozen=True, slots=True)
class PrefixStats:
    prefix: str
    studies: int
    instances: int
    objects: int
    bytes: int
    oldest: StudyAge | None
    newest: StudyAge | None
    pinned_studies: int
    pinned_bytes: int
    incomplete_instances: int
    expiring_bytes: dict[int, int]  # days ahead -> bytes due by then
    expiring_objects: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "studies": self.studies,
            "instances": self.instances,
            "objects": self.objects,
            "bytes": self.bytes,
            "oldest_study": _age_dict(self.oldest),
            "newest_study": _age_dict(self.newest),
            "pinned_studies": self.pinned_studies,
            "pinned_bytes": self.pinned_bytes,
            "incomplete_instances": self.incomplete_instances,
            "expiring_bytes": {str(d): b for d, b in self.expiring_bytes.items()},
            "expiring_objects": {str(d): n for d, n in self.expiring_objects.items()},
        }


def _age_dict(age: StudyAge | None) -> dict[str, str] | None:
    return None if age is None else {"study": age.study, "written": age.written.isoformat()}


def summarize(
    inventory: PrefixInventory, rules: list[Rule], *, now: datetime | None = None
) -> PrefixStats:
    now = now or datetime.now(timezone.utc)
    studies = sorted(inventory.studies.values(), key=lambda s: (s.written, s.study))
    expiring_bytes = dict.fromkeys(FORECAST_DAYS, 0)
    expiring_objects = dict.fromkeys(FORECAST_DAYS, 0)
    for instance in inventory.instances:
        for obj in instance.objects:
            due = expires_at(obj, instance.retention, rules)
            if due is None:
                continue
            for days in FORECAST_DAYS:
                if due <= now + timedelta(days=days):
                    expiring_bytes[days] += obj.size
                    expiring_objects[days] += 1
    instances = list(inventory.instances)
    return PrefixStats(
        prefix=inventory.layout.prefix,
        studies=len(studies),
        instances=len(instances),
        objects=inventory.object_count,
        bytes=inventory.bytes,
        oldest=StudyAge(studies[0].study, studies[0].written) if studies else None,
        newest=StudyAge(studies[-1].study, studies[-1].written) if studies else None,
        pinned_studies=sum(1 for s in studies if s.pinned),
        pinned_bytes=sum(s.pinned_bytes for s in studies),
        incomplete_instances=sum(1 for i in instances if i.complete is False),
        expiring_bytes=expiring_bytes,
        expiring_objects=expiring_objects,
    )


def collect(
    client, bucket: str, layout: KeyLayout | None, *, now: datetime | None = None, workers: int = 8
) -> list[PrefixStats]:
    """Stats for one prefix, or (``layout=None``) for every framecdn prefix in the bucket."""
    rules = get_rules(client, bucket)
    if layout is not None:
        inventories = {layout.prefix: take_inventory(client, bucket, layout, workers=workers)}
    else:
        inventories = take_bucket_inventory(client, bucket, workers=workers)
    return [summarize(inventories[p], rules, now=now) for p in sorted(inventories)]


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def render(stats: PrefixStats) -> str:
    """Plain text for ``framecdn stats``."""
    lines = [
        f"prefix {stats.prefix or '(none)'!r}: {stats.studies} studies, {stats.instances} "
        f"instances, {stats.objects} objects, {human_bytes(stats.bytes)} ({stats.bytes} bytes)"
    ]
    if stats.oldest and stats.newest:
        lines.append(
            f"  oldest study {stats.oldest.study} (written {stats.oldest.written:%Y-%m-%d %H:%M}Z)"
        )
        lines.append(
            f"  newest study {stats.newest.study} (written {stats.newest.written:%Y-%m-%d %H:%M}Z)"
        )
    for days in FORECAST_DAYS:
        lines.append(
            f"  expires within {days:>2} day{'s' if days != 1 else ' '}: "
            f"{stats.expiring_objects[days]} objects, {human_bytes(stats.expiring_bytes[days])}"
        )
    lines.append(
        f"  pinned ({RETENTION_TAG}={PINNED}): {stats.pinned_studies} studies, "
        f"{human_bytes(stats.pinned_bytes)}"
    )
    if stats.incomplete_instances:
        lines.append(
            f"  incomplete instances (index without all frames; `framecdn sweep` removes "
            f"them): {stats.incomplete_instances}"
        )
    return "\n".join(lines)

