"""``framecdn lifecycle apply|show|remove``: the bucket's own eviction rules, in plain words."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.cli.units import count, parse_size
from framecdn.errors import UsageError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import CACHE, PINNED, RETENTION_TAG
from framecdn.maintenance import lifecycle
from framecdn.maintenance.lifecycle import Rule, RuleFilter


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "lifecycle",
        help="install, show or remove the bucket lifecycle rules that evict cached frames",
        description="Eviction is done by the object store's own lifecycle rules. Only the "
        "rules framecdn owns for this prefix are changed; other rules in the bucket stay.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    apply_parser = actions.add_parser(
        "apply",
        help="install (or update) our rules, idempotently",
        description="Install framecdn's expiry rules for the prefix (cache-tagged objects "
        "under {prefix}studies/), keeping every other rule of the bucket.",
    )
    when = apply_parser.add_mutually_exclusive_group()
    when.add_argument(
        "--days",
        type=int,
        default=lifecycle.DEFAULT_DAYS,
        help="cached objects expire this many days after ingest",
    )
    when.add_argument(
        "--date",
        type=date.fromisoformat,
        help="cached objects expire on this date (YYYY-MM-DD, midnight UTC): a one-off "
        "purge; a date that is not in the future needs --yes",
    )
    apply_parser.add_argument(
        "--yes",
        action="store_true",
        help="confirm a --date that is today or past (it deletes every cached object "
        "under the prefix at the store's next lifecycle pass)",
    )
    apply_parser.add_argument(
        "--large-bytes",
        type=parse_size,
        metavar="SIZE",
        help="size tier: objects larger than SIZE (e.g. 1M, 8MiB) expire after --large-days",
    )
    apply_parser.add_argument(
        "--large-days", type=int, help="days after which the size tier's objects expire"
    )
    apply_parser.add_argument(
        "--abort-multipart-days",
        type=int,
        default=lifecycle.ABORT_MULTIPART_DAYS,
        help="abort unfinished multipart uploads after this many days",
    )
    apply_parser.add_argument("--json", action="store_true", help="print the rules as JSON")

    show_parser = actions.add_parser("show", help="print the rules in force, in plain words")
    show_parser.add_argument("--json", action="store_true", help="print the raw rules as JSON")

    remove_parser = actions.add_parser("remove", help="take framecdn's rules for this prefix away")

    for sub in (apply_parser, show_parser, remove_parser):
        add_storage_flags(sub)
        sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    layout = KeyLayout(settings.prefix)
    if args.action == "apply":
        policy = _policy(args)  # usage errors before any request
        bucket = Bucket.from_settings(settings)
        change = lifecycle.apply(bucket, layout, policy)
        print("rules installed" if change.changed else "rules already in force; nothing changed")
        return _print(change.after, layout, args.json)
    bucket = Bucket.from_settings(settings)
    if args.action == "remove":
        change = lifecycle.remove(bucket, layout)
        print("framecdn rules removed" if change.changed else "no framecdn rules for this prefix")
        return _print(change.after, layout, False)
    return _print(bucket.lifecycle_rules(), layout, args.json)


def _policy(args: argparse.Namespace) -> lifecycle.Policy:
    if args.date is not None:
        today = datetime.now(UTC).date()
        if args.date <= today:
            warning = (
                f"--date {args.date} is not in the future: every cached object under the "
                "prefix will be deleted at the store's next lifecycle pass"
            )
            if not args.yes:
                raise UsageError(f"{warning}; add --yes if that is what you want")
            print(f"framecdn lifecycle apply: warning: {warning}", file=sys.stderr)
    return lifecycle.Policy(
        days=None if args.date else args.days,
        date=args.date,
        large_bytes=args.large_bytes,
        large_days=args.large_days,
        abort_multipart_days=args.abort_multipart_days,
    )


def _print(rules: list[Rule], layout: KeyLayout, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"Rules": rules}, indent=2, default=str))
    else:
        print(show(rules, layout))
    return 0


# Plain words -------------------------------------------------------------------


def _when(expiration: Mapping[str, Any]) -> str:
    if "Days" in expiration:
        days = int(expiration["Days"])
        return f"{count(days, 'day')} after they were written"
    if "Date" in expiration:
        when = expiration["Date"]
        text = when.date().isoformat() if isinstance(when, datetime) else str(when)
        return f"on {text} (anything written before then goes at the next pass after it)"
    if expiration.get("ExpiredObjectDeleteMarker"):
        return "when only a delete marker is left"
    return f"per {dict(expiration)!r}"


def describe(rule: Rule) -> str:
    """One rule in plain words, for ``framecdn lifecycle show``."""
    flt = RuleFilter.of(rule)
    who = f"objects under {flt.prefix!r}" if flt.prefix else "ALL objects in the bucket"
    if flt.tags:
        who += " tagged " + " and ".join(f"{name}={value}" for name, value in flt.tags)
    if flt.larger_than is not None:
        who += f" larger than {flt.larger_than:,} bytes"
    if flt.smaller_than is not None:
        who += f" smaller than {flt.smaller_than:,} bytes"
    actions: list[str] = []
    if "Expiration" in rule:
        actions.append(f"{who} are deleted {_when(rule['Expiration'])}")
    if "AbortIncompleteMultipartUpload" in rule:
        days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        actions.append(
            f"unfinished multipart uploads under {flt.prefix or 'the whole bucket'!r} are "
            f"aborted {count(days, 'day')} after they started"
        )
    if "NoncurrentVersionExpiration" in rule:
        days = int(rule["NoncurrentVersionExpiration"].get("NoncurrentDays", 0))
        actions.append(
            f"old versions of {who} are deleted {count(days, 'day')} after being replaced"
        )
    if "Transitions" in rule or "Transition" in rule:
        actions.append(f"{who} move to another storage class")
    text = "; ".join(actions) or f"{who}: no action framecdn knows how to describe"
    if (RETENTION_TAG, CACHE) in flt.tags:
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
        if lifecycle.is_ours(rule, layout):
            mark = "framecdn"
        elif lifecycle.is_framecdn(rule):
            mark = "framecdn (other prefix)"
        else:
            mark = "foreign"
        lines.append(f"- [{mark}] {rule.get('ID') or '(no id)'}: {describe(rule)}")
    return "\n".join(lines)
