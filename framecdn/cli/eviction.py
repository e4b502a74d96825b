"""``framecdn pin|evict|sweep|stats``: keeping, erasing and accounting for cached studies."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta

from framecdn.cli import add_storage_flags, settings_from_args
from framecdn.framestore.keys import InvalidUID, KeyLayout
from framecdn.framestore.s3 import make_client
from framecdn.ingest import stats
from framecdn.ingest.eviction import NothingStored, evict
from framecdn.ingest.pinning import pin
from framecdn.ingest.sweeper import sweep

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``500G``, ``1.5TB``, ``200MiB`` or plain bytes. K/M/G/T are powers of 1000, Ki.. of 1024."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500G or 1.5TB)")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def register(subparsers: argparse._SubParsersAction) -> None:
    pin_parser = subparsers.add_parser(
        "pin",
        help="keep a study (or series) out of lifecycle expiry, or release it",
        description="Retag every object of the study as framecdn-retention=pinned (or back to "
        "cache with --unpin). Pinned objects are never expired nor swept.",
    )
    pin_parser.add_argument("study", help="StudyInstanceUID")
    pin_parser.add_argument("--series", help="only this SeriesInstanceUID")
    pin_parser.add_argument("--unpin", action="store_true", help="make it expirable again")
    pin_parser.set_defaults(handler=run_pin)

    evict_parser = subparsers.add_parser(
        "evict",
        help="delete a study, series or instance now (erasure requests)",
        description="Delete every object of it, index first so the origin stops serving it at "
        "once. Give a study, or --series / --instance alone (then the prefix is searched).",
    )
    evict_parser.add_argument("study", nargs="?", help="StudyInstanceUID")
    evict_parser.add_argument("--series", help="SeriesInstanceUID")
    evict_parser.add_argument("--instance", help="SOPInstanceUID")
    evict_parser.add_argument("--dry-run", action="store_true", help="only list what would go")
    evict_parser.set_defaults(handler=run_evict)

    sweep_parser = subparsers.add_parser(
        "sweep",
        help="evict least recently read studies until under a budget (run on a schedule)",
        description="Clean half-evicted instances, evict the least recently accessed studies "
        "until usage is at most --max-bytes (pinned studies stay), drop stale access markers, "
        "and optionally refresh the expiry of studies that are still being read.",
    )
    sweep_parser.add_argument("--max-bytes", type=parse_size, help="budget, e.g. 500G or 2TB")
    sweep_parser.add_argument(
        "--refresh-after",
        type=float,
        metavar="DAYS",
        help="copy-in-place studies read since written whose objects are this many days old "
        "(AWS S3 and MinIO only; skipped on SeaweedFS)",
    )
    sweep_parser.add_argument(
        "--force-refresh", action="store_true", help="refresh even on a store not known to be safe"
    )
    sweep_parser.add_argument("--dry-run", action="store_true", help="plan only, delete nothing")
    sweep_parser.set_defaults(handler=run_sweep)

    stats_parser = subparsers.add_parser(
        "stats",
        help="objects, bytes, oldest/newest study, what expires soon, pinned bytes",
    )
    stats_parser.add_argument(
        "--all-prefixes", action="store_true", help="every framecdn prefix in the bucket"
    )
    stats_parser.add_argument("--json", action="store_true", help="machine-readable output")
    stats_parser.set_defaults(handler=run_stats)

    for parser in (pin_parser, evict_parser, sweep_parser, stats_parser):
        add_storage_flags(parser)


def _context(args: argparse.Namespace):
    settings = settings_from_args(args)
    return settings, make_client(settings), KeyLayout(settings.prefix)


def run_pin(args: argparse.Namespace) -> int:
    settings, client, layout = _context(args)
    try:
        report = pin(
            client,
            settings.bucket,
            layout,
            args.study,
            series=args.series,
            unpin=args.unpin,
            workers=settings.ingest_workers,
        )
    except (NothingStored, InvalidUID) as exc:
        print(f"framecdn pin: {exc}", file=sys.stderr)
        return 1
    print(
        f"tagged {report.objects} objects of {report.instances} instances "
        f"({stats.human_bytes(report.bytes)}) framecdn-retention={report.value}"
    )
    return 0


def run_evict(args: argparse.Namespace) -> int:
    settings, client, layout = _context(args)
    try:
        report = evict(
            client,
            settings.bucket,
            layout,
            study=args.study,
            series=args.series,
            instance=args.instance,
            dry_run=args.dry_run,
        )
    except (NothingStored, InvalidUID, ValueError) as exc:
        print(f"framecdn evict: {exc}", file=sys.stderr)
        return 1
    for key in report.instances:
        print(f"{'would remove' if args.dry_run else 'removed'} {layout.instance_prefix(key)}")
    print(report.summary())
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    settings, client, layout = _context(args)
    if args.max_bytes is None and args.refresh_after is None:
        print("framecdn sweep: give --max-bytes and/or --refresh-after", file=sys.stderr)
        return 2
    report = sweep(
        client,
        settings.bucket,
        layout,
        max_bytes=args.max_bytes,
        refresh_after=None if args.refresh_after is None else timedelta(days=args.refresh_after),
        force_refresh=args.force_refresh,
        dry_run=args.dry_run,
        workers=settings.ingest_workers,
    )
    print(report.summary())
    return 1 if report.over_budget else 0


def run_stats(args: argparse.Namespace) -> int:
    settings, client, layout = _context(args)
    found = stats.collect(
        client,
        settings.bucket,
        None if args.all_prefixes else layout,
        workers=settings.ingest_workers,
    )
    if args.json:
        print(json.dumps([s.as_dict() for s in found], indent=2))
    else:
        print("\n".join(stats.render(s) for s in found) or "no framecdn objects in this bucket")
    return 0
