"""``framecdn lifecycle apply|show|remove``: the bucket's own eviction rules."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date

from framecdn.cli import add_storage_flags, settings_from_args
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.s3 import make_client
from framecdn.ingest import lifecycle


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lifecycle",
        help="install, show or remove the bucket lifecycle rules that evict cached frames",
        description="Eviction is done by the object store's own lifecycle rules. Only the "
        "rules framecdn owns for this prefix are changed; other rules in the bucket stay.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    apply_parser = actions.add_parser("apply", help="install (or update) our rules, idempotently")
    when = apply_parser.add_mutually_exclusive_group()
    when.add_argument(
        "--days",
        type=int,
        help="cached objects expire this many days after ingest "
        f"(default {lifecycle.DEFAULT_DAYS})",
    )
    when.add_argument(
        "--date",
        type=date.fromisoformat,
        help="cached objects expire on this date (YYYY-MM-DD): a one-off purge",
    )
    apply_parser.add_argument(
        "--large-bytes", type=int, help="size tier: objects larger than this many bytes..."
    )
    apply_parser.add_argument("--large-days", type=int, help="...expire after this many days")
    apply_parser.add_argument(
        "--abort-multipart-days",
        type=int,
        default=lifecycle.ABORT_MULTIPART_DAYS,
        help="abort unfinished multipart uploads after this many days (default 1)",
    )
    apply_parser.add_argument("--json", action="store_true", help="print the rules as JSON")

    show_parser = actions.add_parser("show", help="print the rules in force, in plain words")
    show_parser.add_argument("--json", action="store_true", help="print the raw rules as JSON")

    actions.add_parser("remove", help="take framecdn's rules for this prefix away")

    for sub in (apply_parser, show_parser, actions.choices["remove"]):
        add_storage_flags(sub)
        sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    layout = KeyLayout(settings.prefix)
    client = make_client(settings)
    if args.action == "apply":
        try:
            policy = lifecycle.Policy(
                days=None if args.date else (args.days or lifecycle.DEFAULT_DAYS),
                date=args.date,
                large_bytes=args.large_bytes,
                large_days=args.large_days,
                abort_multipart_days=args.abort_multipart_days,
            )
        except ValueError as exc:
            print(f"framecdn lifecycle apply: {exc}", file=sys.stderr)
            return 2
        try:
            change = lifecycle.apply(client, settings.bucket, layout, policy)
        except lifecycle.LifecycleNotHonoured as exc:
            print(f"framecdn lifecycle apply: {exc}", file=sys.stderr)
            return 1
        print("rules installed" if change.changed else "rules already in force; nothing changed")
        return _print(change.after, layout, args.json)
    if args.action == "remove":
        change = lifecycle.remove(client, settings.bucket, layout)
        print("framecdn rules removed" if change.changed else "no framecdn rules for this prefix")
        return _print(change.after, layout, False)
    return _print(lifecycle.get_rules(client, settings.bucket), layout, args.json)


def _print(rules: list[lifecycle.Rule], layout: KeyLayout, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"Rules": rules}, indent=2, default=str))
    else:
        print(lifecycle.show(rules, layout))
    return 0
