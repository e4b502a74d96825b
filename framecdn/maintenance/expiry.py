"""When the bucket's lifecycle rules delete an object: the forecast of ``framecdn stats``.

Days count from the write, rounded up to the next midnight UTC as AWS does
(SeaweedFS deletes at its next daily pass after that). Only framecdn's retention
tag is known per instance, so a rule that needs any other tag is taken not to match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from framecdn.framestore.bucket import StoredObject
from framecdn.framestore.retention import RETENTION_TAG
from framecdn.maintenance.lifecycle import RuleFilter


def next_midnight(moment: datetime) -> datetime:
    """``moment`` if it is midnight UTC, else the next midnight UTC."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if day == moment else day + timedelta(days=1)


def _due(expiration: Mapping[str, Any], written: datetime) -> datetime | None:
    if "Days" in expiration:
        return next_midnight(written + timedelta(days=int(expiration["Days"])))
    if "Date" in expiration:
        when = expiration["Date"]
        if isinstance(when, datetime):
            return when
        return datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    return None


def expires_at(
    obj: StoredObject, retention: str | None, rules: Iterable[Mapping[str, Any]]
) -> datetime | None:
    """When the rules delete this object, or None if none applies."""
    tags = {} if retention is None else {RETENTION_TAG: retention}
    due: datetime | None = None
    for rule in rules:
        expiration = rule.get("Expiration")
        if rule.get("Status") != "Enabled" or not expiration:
            continue
        if not RuleFilter.of(rule).matches(obj.key, obj.size, tags):
            continue
        when = _due(expiration, obj.last_modified)
        if when is not None:
            due = when if due is None else min(due, when)
    return due
