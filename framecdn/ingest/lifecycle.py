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

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from botocore.exceptions import ClientError

from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import CACHE, PINNED, RETENTION_TAG

ID_PREFIX = "framecdn:"
DEFAULT_DAYS = 30
ABORT_MULTIPART_DAYS = 1

Rule = dict[str, Any]


class LifecycleNotHonoured(RuntimeError):
    """The store accepted our rules but reads back something else (it dropped a filter)."""


def owner_id(layout: KeyLayout) -> str:
    """The ID prefix of the rules framecdn installs for one key prefix."""
    return f"{ID_PREFIX}{layout.prefix}:"


def is_ours(rule: Rule, layout: KeyLayout) -> bool:
    return str(rule.get("ID", "")).startswith(owner_id(layout))


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
            raise ValueError("give exactly one of days or date")
        if self.days is not None and self.days < 1:
            raise ValueError("days must be at least 1")
        if (self.large_bytes is None) != (self.large_days is None):
            raise ValueError("large_bytes and large_days go together")
        if self.large_days is not None:
            if self.large_days < 1 or (self.large_bytes or 0) < 1:
                raise ValueError("large_days and large_bytes must be positive")
            if self.days is not None and self.large_days >= self.days:
                raise ValueError("large objects must expire sooner than the rest")
        if self.abort_multipart_days < 1:
            raise ValueError("abort_multipart_days must be at least 1")


def _expiration(days: int | None, when: date | None) -> dict[str, Any]:
    if when is not None:
        return {"Date": datetime.combine(when, time(0, 0), tzinfo=timezone.utc)}
    return {"Days": days}


def build_rules(layout: KeyLayout, policy: Policy) -> list[Rule]:
    """The exact rules framecdn installs for one prefix (see docs/operations.md)."""
    scope = layout.all_studies()
    cache_tag = [{"Key": RETENTION_TAG, "Value": CACHE}]
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


# Talking to the bucket -------------------------------------------------------


def get_rules(client, bucket: str) -> list[Rule]:
    """Every rule in force on the bucket; an empty list when it has no configuration."""
    try:
        return list(client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return []
        raise


def _put_rules(client, bucket: str, rules: list[Rule]) -> None:
    if rules:
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": rules}
        )
    else:
        client.delete_bucket_lifecycle(Bucket=bucket)


def _canonical(rule: Rule) -> Any:
    """A comparable form: stores echo rules back with keys reordered and dates as datetimes."""
    if isinstance(rule, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in rule.items()))
    if isinstance(rule, list):
        return tuple(_canonical(v) for v in rule)
    if isinstance(rule, datetime):
        return rule.astimezone(timezone.utc).isoformat()
    return rule


def _same(a: list[Rule], b: list[Rule]) -> bool:
    return sorted(map(repr, map(_canonical, a))) == sorted(map(repr, map(_canonical, b)))


@dataclass(frozen=True, slots=True)
class Change:
    """What apply/remove did: the rules before and after, and whether it wrote."""

    before: list[Rule]
    after: list[Rule]
    changed: bool


def apply(client, bucket: str, layout: KeyLayout, policy: Policy) -> Change:
    """Install our rules for ``layout``'s prefix, keeping every foreign rule. Idempotent."""
    before = get_rules(client, bucket)
    ours = build_rules(layout, policy)
    after = [rule for rule in before if not is_ours(rule, layout)] + ours
    if _same(before, after):
        return Change(before, before, changed=False)
    _put_rules(client, bucket, after)
    stored = get_rules(client, bucket)
    echoed = [rule for rule in stored if is_ours(rule, layout)]
    if not _same(echoed, ours):
        # Never leave a rule in force that the store does not understand as we meant it.
        _put_rules(client, bucket, [rule for rule in stored if not is_ours(rule, layout)])
        raise LifecycleNotHonoured(
            f"bucket {bucket} stored our rules as {echoed!r}, not {ours!r}; "
            "they were taken away again (see docs/operations.md)"
        )
    return Change(before, stored, changed=True)


def remove(client, bucket: str, layout: KeyLayout) -> Change:
    """Take our rules for ``layout``'s prefix away; foreign rules stay. Idempotent."""
    before = get_rules(client, bucket)
    after = [rule for rule in before if not is_ours(rule, layout)]
    if len(after) == len(before):
        return Change(before, before, changed=False)
    _put_rules(client, bucket, after)
    return Change(before, after, changed=True)


# Plain words -------------------------------------------------------------------


def _filter_parts(rule: Rule) -> tuple[str | None, list[dict[str, str]], int | None, int | None]:
    """(prefix, tags, size greater than, size less than) of any rule, old or new style."""
    flt = rule.get("Filter")
    if flt is None:
        return rule.get("Prefix"), [], None, None
    inner = flt.get("And", flt)
    tags = list(inner.get("Tags", []))
    if "Tag" in flt:
        tags.append(flt["Tag"])
    return (
        inner.get("Prefix"),
        tags,
        inner.get("ObjectSizeGreaterThan"),
        inner.get("ObjectSizeLessThan"),
    )


def _when(expiration: dict[str, Any]) -> str:
    if "Days" in expiration:
        days = expiration["Days"]
        return f"{days} day{'s' if days != 1 else ''} after they were written"
    if "Date" in expiration:
        when = expiration["Date"]
        text = when.date().isoformat() if isinstance(when, datetime) else str(when)
        return f"on {text} (anything written before then goes at the next pass after it)"
    if expiration.get("ExpiredObjectDeleteMarker"):
        return "when only a delete marker is left"
    return f"per {expiration!r}"


def describe(rule: Rule) -> str:
    """One rule in plain words, for ``framecdn lifecycle show``."""
    prefix, tags, larger, smaller = _filter_parts(rule)
    who = f"objects under {prefix!r}" if prefix else "ALL objects in the bucket"
    if tags:
        who += " tagged " + " and ".join(f"{t['Key']}={t['Value']}" for t in tags)
    if larger is not None:
        who += f" larger than {larger:,} bytes"
    if smaller is not None:
        who += f" smaller than {smaller:,} bytes"
    actions: list[str] = []
    if "Expiration" in rule:
        actions.append(f"{who} are deleted {_when(rule['Expiration'])}")
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        actions.append(
            f"unfinished multipart uploads under {prefix or 'the whole bucket'!r} are "
            f"aborted {days} day{'s' if days != 1 else ''} after they started"
        )
    if "NoncurrentVersionExpiration" in rule:
        days = rule["NoncurrentVersionExpiration"].get("NoncurrentDays")
        actions.append(f"old versions of {who} are deleted {days} days after being replaced")
    if "Transitions" in rule or "Transition" in rule:
        actions.append(f"{who} move to another storage class")
    text = "; ".join(actions) or f"{who}: no action framecdn knows how to describe"
    if any(t["Key"] == RETENTION_TAG and t["Value"] == CACHE for t in tags):
        text += f" ({RETENTION_TAG}={PINNED} objects are kept)"
    if rule.get("Status") != "Enabled":
        text = f"DISABLED: {text}"
    return text


def show(rules: list[Rule], layout: KeyLayout) -> str:
    """Every rule in force, ours marked, each in plain words."""
    if not rules:
        return "no lifecycle rules: nothing in this bucket expires on its own"
    lines = []
    for rule in rules:
        mark = "framecdn" if is_ours(rule, layout) else (
            "framecdn (other prefix)" if str(rule.get("ID", "")).startswith(ID_PREFIX)
            else "foreign"
        )
        lines.append(f"- [{mark}] {rule.get('ID') or '(no id)'}: {describe(rule)}")
    return "\n".join(lines)
