"""``framecdn stats``: what is in the bucket and when it goes, as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.cli.eviction import unreadable_lines
from framecdn.cli.units import count, human_bytes
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import PINNED, RETENTION_TAG
from framecdn.maintenance.stats import FORECAST_DAYS, PrefixStats, collect


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="objects, bytes, oldest/newest study, what expires soon, pinned bytes",
        description="Count what framecdn stored under the prefix and forecast what the "
        "bucket's lifecycle rules delete within 1, 7 and 30 days. Exits 1 if the retention "
        "of some study could not be read.",
    )
    parser.add_argument(
        "--all-prefixes", action="store_true", help="every framecdn prefix in the bucket"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    found = collect(
        Bucket.from_settings(settings),
        None if args.all_prefixes else KeyLayout(settings.prefix),
        workers=settings.ingest_workers,
    )
    if args.json:
        print(json.dumps([s.as_dict() for s in found], indent=2))
    else:
        print("\n".join(render(s) for s in found) or "no framecdn objects in this bucket")
    unreadable = {study: why for s in found for study, why in s.unreadable.items()}
    for line in unreadable_lines(unreadable, then="counted as neither pinned nor expiring"):
        print(f"framecdn stats: {line}", file=sys.stderr)
    return 1 if unreadable else 0


def render(stats: PrefixStats) -> str:
    """Plain text for ``framecdn stats``."""
    lines = [
        f"prefix {stats.prefix or '(none)'!r}: {count(stats.studies, 'study', 'studies')}, "
        f"{count(stats.instances, 'instance')}, {count(stats.objects, 'object')}, "
        f"{human_bytes(stats.bytes)} ({count(stats.bytes, 'byte')})"
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
            f"{count(stats.expiring_objects[days], 'object')}, "
            f"{human_bytes(stats.expiring_bytes[days])}"
        )
    lines.append(
        f"  pinned ({RETENTION_TAG}={PINNED}): {count(stats.pinned_studies, 'study', 'studies')}, "
        f"{human_bytes(stats.pinned_bytes)}"
    )
    if stats.incomplete_instances:
        lines.append(
            f"  incomplete instances (index without all frames; `framecdn sweep` removes "
            f"them): {stats.incomplete_instances}"
        )
    if stats.unreadable:
        lines.append(
            f"  retention unknown (tags could not be read; never swept): "
            f"{count(len(stats.unreadable), 'study', 'studies')}"
        )
    return "\n".join(lines)
