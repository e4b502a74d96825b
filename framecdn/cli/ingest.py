"""``framecdn ingest``: split DICOM files into per-frame objects in the bucket."""

from __future__ import annotations

import argparse
import sys

from framecdn.cli import Subcommands, add_storage_flags, setting_help, settings_from_args
from framecdn.cli.units import count
from framecdn.ingest.pipeline import IngestReport, IngestResult, ingest_paths


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="split DICOM files into per-frame objects",
        description="Upload every frame of each DICOM instance as its own object, then its "
        "metadata, then its index (the commit marker). Directories are walked recursively. "
        "Exits 1 if any file could not be ingested.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or directories")
    parser.add_argument("--force", action="store_true", help="re-upload unchanged instances")
    parser.add_argument(
        "--workers",
        dest="ingest_workers",
        type=int,
        help=setting_help("ingest_workers", "parallel uploads"),
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: a bar on a terminal)"
    )
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def _print_result(result: IngestResult) -> None:
    if result.status == "failed":
        print(f"FAILED {result.source}: {result.reason}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, "s3_endpoint", "bucket", "prefix", "ingest_workers")
    report = ingest_paths(
        args.paths,
        settings,
        force=args.force,
        progress=False if args.no_progress else None,
        on_result=_print_result,
    )
    print(summary(report))
    return 0 if report.ok else 1


def summary(report: IngestReport) -> str:
    """``1 instance ingested, 0 unchanged, 0 failed; 60 frames, 557.2 MB in ...``."""
    rate = report.bytes / 1e6 / report.seconds if report.seconds > 0 else 0.0
    return (
        f"{count(report.count('ingested'), 'instance')} ingested, "
        f"{report.count('metadata-only')} metadata-only, {report.count('skipped')} unchanged, "
        f"{report.count('failed')} failed; "
        f"{count(report.frames, 'frame')}, {report.bytes / 1e6:.1f} MB "
        f"in {report.seconds:.1f} s ({rate:.1f} MB/s)"
    )
