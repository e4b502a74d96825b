"""Bucket lifecycle rules: eviction done by the object store itself, at no cost to us.

framecdn owns the rules whose ID starts with ``framecdn:{prefix}:`` (a ``:`` can
never appear in a prefix, so one clinic's rules never match another's). Every
other rule in the bucket is foreign and is kept as it is: apply and remove read
the whole configuration, change only our rules, and write it back.

The expiry rules always filter on prefix **and** tag: the tag keeps pinned objects
out, the prefix keeps the rule off everything else in the bucket (old SeaweedFS
versions turned a rule without a prefix into a TTL on the whole bucket).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from framecdn.errors import StoreError, UsageError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import CACHE, tag_set

ID_PREFIX = "framecdn:"
DEFAULT_DAYS = 30
ABORT_MULTIPART_DAYS = 1

Rule = dict[str, Any]


class LifecycleNotHonoured(StoreError):
    """The store accepted our rules but reads back something else (it dropped a filter)."""


class InvalidPolicy(UsageError, ValueError):
    """A lifecycle policy that makes no sense (e.g. a size tier that expires later)."""


def owner_id(layout: KeyLayout) -> str:
    """The ID prefix of the rules framecdn installs for one key prefix."""
    return f"{ID_PREFIX}{layout.prefix}:"


def is_ours(rule: Mapping[str, Any], layout: KeyLayout) -> bool:
    return str(rule.get("ID", "")).startswith(owner_id(layout))


def is_framecdn(rule: Mapping[str, Any]) -> bool:
    """Installed by framecdn, for this or another prefix."""
    return str(rule.get("ID", "")).startswith(ID_PREFIX)


@dataclass(frozen=True, slots=True)
class RuleFilter:
    """What a rule matches, whichever way it was written.

    S3 has three spellings (a rule-level ``Prefix``, a ``Filter`` with one condition,
    a ``Filter`` with an ``And`` of several); this is the one reading of them that
    ``show`` and the expiry forecast share.
    """

    prefix: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    larger_than: int | None = None
    smaller_than: int | None = None

    @classmethod
    def of(cls, rule: Mapping[str, Any]) -> RuleFilter:
        flt = rule.get("Filter")
        if flt is None:
            return cls(prefix=rule.get("Prefix"))
        inner = flt.get("And", flt)
        tags = [*inner.get("Tags", []), *([flt["Tag"]] if "Tag" in flt else [])]
        larger = inner.get("ObjectSizeGreaterThan")
        smaller = inner.get("ObjectSizeLessThan")
        return cls(
            prefix=inner.get("Prefix"),
            tags=tuple((str(t["Key"]), str(t["Value"])) for t in tags),
            larger_than=None if larger is None else int(larger),
            smaller_than=None if smaller is None else int(smaller),
        )

    def matches(self, key: str, size: int, tags: Mapping[str, str]) -> bool:
        """Whether an object with this key, size and tags falls under the rule."""
        if not key.startswith(self.prefix or ""):
            return False
        if any(tags.get(name) != value for name, value in self.tags):
            return False
        if self.larger_than is not None and not size > self.larger_than:
            return False
        return self.smaller_than is None or size < self.smaller_than


@dataclass(frozen=True, slots=True)
class Policy:
    """What ``framecdn lifecycle apply`` asks for.

    ``days`` or ``date`` sets when cache-tagged objects expire (a ``date`` is for
    a one-off purge and for tests; AWS wants it at midnight UTC). ``large_bytes``
    with ``large_days`` adds a tier: objects bigger than that expire sooner. The
    tier only ever matches frames (metadata and index are small), so an instance's
    index outlives its frames, never the other way round.
    """

    days: int | None = DEFAULT_DAYS
    date: date | None = None
    large_bytes: int | None = None
    large_days: int | None = None
    abort_multipart_days: int = ABORT_MULTIPART_DAYS

    def __post_init__(self) -> None:
        if (self.days is None) == (self.date is None):
            raise InvalidPolicy("give exactly one of --days or --date")
        if self.days is not None and self.days < 1:
            raise InvalidPolicy("--days must be at least 1")
        if (self.large_bytes is None) != (self.large_days is None):
            raise InvalidPolicy("--large-bytes and --large-days go together")
        if self.large_days is not None:
            if self.large_days < 1 or (self.large_bytes or 0) < 1:
                raise InvalidPolicy("--large-days and --large-bytes must be positive")
            if self.days is not None and self.large_days >= self.days:
                raise InvalidPolicy("large objects must expire sooner than the rest")
        if self.abort_multipart_days < 1:
            raise InvalidPolicy("--abort-multipart-days must be at least 1")


def _expiration(days: int | None, when: date | None) -> dict[str, Any]:
    if when is not None:
        return {"Date": datetime.combine(when, time(0, 0), tzinfo=UTC)}
    return {"Days": days}


def build_rules(layout: KeyLayout, policy: Policy) -> list[Rule]:
    """The exact rules framecdn installs for one prefix (see docs/operations.md)."""
    scope = layout.all_studies()
    cache_tag = tag_set(CACHE)
    rules: list[Rule] = [
        {
            "ID": f"{owner_id(layout)}expire",
            "Status": "Enabled",
            "Filter": {"And": {"Prefix": scope, "Tags": cache_tag}},
            "Expiration": _expiration(policy.days, policy.date),
        }
    ]
    if policy.large_bytes is not None:
        rules.append(
            {
                "ID": f"{owner_id(layout)}expire-large",
                "Status": "Enabled",
                "Filter": {
                    "And": {
                        "Prefix": scope,
                        "Tags": cache_tag,
                        "ObjectSizeGreaterThan": policy.large_bytes,
                    }
                },
                "Expiration": _expiration(policy.large_days, None),
            }
        )
    rules.append(
        {
            # AWS allows no tag filter with this action; the prefix alone scopes it.
            "ID": f"{owner_id(layout)}abort-multipart",
            "Status": "Enabled",
            "Filter": {"Prefix": scope},
            "AbortIncompleteMultipartUpload": {
                "DaysAfterInitiation": policy.abort_multipart_days
            },
        }
    )
    return rules


def _canonical(rule: Any) -> Any:
    """A comparable form: stores echo rules back with keys reordered and dates as datetimes."""
    if isinstance(rule, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in rule.items()))
    if isinstance(rule, list):
        return tuple(_canonical(v) for v in rule)
    if isinstance(rule, datetime):
        return rule.astimezone(UTC).isoformat()
    return rule


def _same(a: list[Rule], b: list[Rule]) -> bool:
    return sorted(map(repr, map(_canonical, a))) == sorted(map(repr, map(_canonical, b)))


@dataclass(frozen=True, slots=True)
class Change:
    """What apply/remove did: the rules before and after, and whether it wrote."""

    before: list[Rule]
    after: list[Rule]
    changed: bool


def apply(bucket: Bucket, layout: KeyLayout, policy: Policy) -> Change:
    """Install our rules for ``layout``'s prefix, keeping every foreign rule. Idempotent."""
    before = bucket.lifecycle_rules()
    ours = build_rules(layout, policy)
    after = [rule for rule in before if not is_ours(rule, layout)] + ours
    if _same(before, after):
        return Change(before, before, changed=False)
    bucket.put_lifecycle_rules(after)
    stored = bucket.lifecycle_rules()
    echoed = [rule for rule in stored if is_ours(rule, layout)]
    if not _same(echoed, ours):
        # Never leave a rule in force that the store does not understand as we meant it.
        bucket.put_lifecycle_rules([rule for rule in stored if not is_ours(rule, layout)])
        raise LifecycleNotHonoured(
            f"bucket {bucket.name} stored our rules as {echoed!r}, not {ours!r}; "
            "they were taken away again (see docs/operations.md)"
        )
    return Change(before, stored, changed=True)


def remove(bucket: Bucket, layout: KeyLayout) -> Change:
    """Take our rules for ``layout``'s prefix away; foreign rules stay. Idempotent."""
    before = bucket.lifecycle_rules()
    after = [rule for rule in before if not is_ours(rule, layout)]
    if len(after) == len(before):
        return Change(before, before, changed=False)
    bucket.put_lifecycle_rules(after)
    return Change(before, after, changed=True)
