"""The numbers of ``framecdn stats``: counts, ages, pinned bytes and the expiry forecast.

The CLI turns a :class:`PrefixStats` into text (``framecdn.cli.stats``) or JSON
(:meth:`PrefixStats.as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.maintenance.expiry import expires_at
from framecdn.maintenance.inventory import PrefixInventory, take_bucket_inventory, take_inventory
from framecdn.maintenance.lifecycle import Rule

FORECAST_DAYS = (1, 7, 30)


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
    unreadable: dict[str, str]  # study -> why its retention is unknown

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
            "unreadable_studies": dict(self.unreadable),
        }


def _age_dict(age: StudyAge | None) -> dict[str, str] | None:
    return None if age is None else {"study": age.study, "written": age.written.isoformat()}


def summarize(
    inventory: PrefixInventory, rules: list[Rule], *, now: datetime | None = None
) -> PrefixStats:
    now = now or datetime.now(UTC)
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
        unreadable=inventory.unreadable,
    )


def collect(
    bucket: Bucket,
    layout: KeyLayout | None,
    *,
    now: datetime | None = None,
    workers: int = 8,
) -> list[PrefixStats]:
    """Stats for one prefix, or (``layout=None``) for every framecdn prefix in the bucket."""
    rules = bucket.lifecycle_rules()
    if layout is not None:
        inventories = {layout.prefix: take_inventory(bucket, layout, workers=workers)}
    else:
        inventories = take_bucket_inventory(bucket, workers=workers)
    return [summarize(inventories[p], rules, now=now) for p in sorted(inventories)]
