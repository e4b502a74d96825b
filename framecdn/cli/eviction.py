"""``framecdn pin|evict|sweep``: keeping and erasing cached studies, and what was done."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.cli.units import count, human_bytes, parse_size
from framecdn.errors import UsageError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.maintenance.eviction import EvictionReport, evict
from framecdn.maintenance.pinning import pin
from framecdn.maintenance.sweeper import SweepReport, sweep

#: At most this many skipped studies are named one by one.
SKIPPED_SHOWN = 5


def register(subparsers: Subcommands) -> None:
    pin_parser = subparsers.add_parser(
        "pin",
        help="keep a study (or series) out of lifecycle expiry, or release it",
        description="Retag every object of the study as framecdn-retention=pinned (or back to "
        "cache with --unpin). Pinned objects are never expired nor swept.",
    )
    pin_parser.add_argument("study", help="StudyInstanceUID")
    pin_parser.add_argument("--series", help="only this SeriesInstanceUID (default: all)")
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
        "and optionally refresh the expiry of studies that are still being read. Exits 1 "
        "when still over budget or when a study had to be skipped.",
    )
    sweep_parser.add_argument(
        "--max-bytes", type=parse_size, metavar="SIZE", help="budget, e.g. 500G, 2TB or 1.5TiB"
    )
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

    for parser in (pin_parser, evict_parser, sweep_parser):
        add_storage_flags(parser)


def run_pin(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = pin(
        Bucket.from_settings(settings),
        KeyLayout(settings.prefix),
        args.study,
        series=args.series,
        unpin=args.unpin,
        workers=settings.ingest_workers,
    )
    print(
        f"tagged {count(report.objects, 'object')} of {count(report.instances, 'instance')} "
        f"({human_bytes(report.bytes)}) framecdn-retention={report.value}"
    )
    return 0


def run_evict(args: argparse.Namespace) -> int:
    if args.study is None and args.series is None and args.instance is None:
        raise UsageError("name a study, a series (--series) or an instance (--instance)")
    settings = settings_from_args(args)
    layout = KeyLayout(settings.prefix)
    report = evict(
        Bucket.from_settings(settings),
        layout,
        study=args.study,
        series=args.series,
        instance=args.instance,
        dry_run=args.dry_run,
    )
    for key in report.instances:
        print(f"{'would remove' if args.dry_run else 'removed'} {layout.instance_prefix(key)}")
    print(eviction_summary(report))
    return 0


def eviction_summary(report: EvictionReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    return (
        f"{verb} {count(len(report.instances), 'instance')} of "
        f"{count(report.studies, 'study', 'studies')}: {count(report.objects, 'object')}, "
        f"{count(report.bytes, 'byte')}"
    )


def run_sweep(args: argparse.Namespace) -> int:
    if args.max_bytes is None and args.refresh_after is None:
        raise UsageError("give --max-bytes and/or --refresh-after")
    settings = settings_from_args(args)
    report = sweep(
        Bucket.from_settings(settings),
        KeyLayout(settings.prefix),
        max_bytes=args.max_bytes,
        refresh_after=None if args.refresh_after is None else timedelta(days=args.refresh_after),
        force_refresh=args.force_refresh,
        dry_run=args.dry_run,
        workers=settings.ingest_workers,
    )
    print(sweep_summary(report))
    for line in unreadable_lines(report.skipped, then="skipped, nothing of it was deleted"):
        print(f"framecdn sweep: {line}", file=sys.stderr)
    return 0 if report.ok else 1


def sweep_summary(report: SweepReport) -> str:
    verb = "would evict" if report.dry_run else "evicted"
    studies = count(len(report.evicted), "study", "studies")
    lines = [
        f"usage {report.usage_before} -> {report.usage_after} bytes"
        + (f" (budget {report.max_bytes})" if report.max_bytes is not None else ""),
        f"{verb} {studies} (least recently used first): "
        + (", ".join(c.study for c in report.evicted) or "none"),
        f"half-evicted instances cleaned: {len(report.repaired)}; "
        f"orphans: {len(report.orphans)}; old generations: {len(report.leftovers)}; "
        f"stale access markers: {len(report.markers_removed)}",
    ]
    if report.refreshed or report.refresh_note:
        refreshed = count(len(report.refreshed), "study", "studies")
        lines.append(f"refreshed {refreshed}. {report.refresh_note}".strip())
    if report.over_budget:
        lines.append(
            f"still over budget: {report.kept_bytes} bytes may not be evicted "
            f"({report.pinned_bytes} pinned)"
        )
    return "\n".join(lines)


def unreadable_lines(unreadable: dict[str, str], *, then: str) -> list[str]:
    """One line per study whose retention tag could not be read (the first few)."""
    lines = [
        f"study {study}: its retention tag could not be read ({reason}); {then}"
        for study, reason in list(unreadable.items())[:SKIPPED_SHOWN]
    ]
    if len(unreadable) > SKIPPED_SHOWN:
        more = count(len(unreadable) - SKIPPED_SHOWN, "more study", "more studies")
        lines.append(f"... and {more}")
    return lines
