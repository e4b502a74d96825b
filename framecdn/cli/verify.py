"""``framecdn verify [STUDY | --all]``: the bucket checked against its indexes, and repaired.

The checking and repairing live in :mod:`framecdn.maintenance.verify`, which never
imports ingest; the true frames of an instance (from its source file, ``--source``, or
from the upstream PACS, ``FRAMECDN_UPSTREAM_URL``) in :mod:`framecdn.ingest.references`.
They are wired here, the one place that sees both, with ``--repair``'s re-ingest.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.cli.units import count, human_bytes
from framecdn.errors import UsageError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout, validate_uid
from framecdn.ingest.dicomweb_source import DicomwebSource
from framecdn.ingest.pipeline import Ingestor
from framecdn.ingest.references import SourceFiles, SourceInstances
from framecdn.ingest.splitter import InflateLimits
from framecdn.maintenance.verify import (
    NoSource,
    Reingest,
    VerifyReport,
    describe_key,
    repair,
    verify,
)

#: The label of each kind of finding in the report, padded to one width.
LABELS = {
    "missing-frame": "DAMAGED",
    "frame-size": "DAMAGED",
    "frame-checksum": "DAMAGED",
    "missing-metadata": "DAMAGED",
    "metadata-mismatch": "DAMAGED",
    "invalid-index": "DAMAGED",
    "source-mismatch": "DIFFERS",
    "part10-invalid": "DAMAGED",
    "orphan": "ORPHAN",
    "old-generation": "OLD",
    "unreadable": "UNREADABLE",
}


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check stored instances against their indexes (and sources); --repair fixes",
        description="Re-read each instance's index and check every frame and its metadata: "
        "there, of the indexed size and SHA-256 (read back in chunks). With --source (or "
        "FRAMECDN_UPSTREAM_URL) the frames are also compared with the true ones. Lists "
        "objects no index names: orphans (no index) and old generations (a replacement "
        "that died, an old version left behind); those younger than --grace are pending "
        "(an ingest may be running) and never touched. --repair ingests a damaged instance "
        "again from its source, or removes it (index first); and removes orphans and old "
        "generations. Runs beside a live origin: reads, and deletes only what is provably "
        "dead. Exits 1 when damage remains.",
    )
    parser.add_argument("study", nargs="?", help="StudyInstanceUID to check")
    parser.add_argument("--all", action="store_true", help="every study under the prefix")
    parser.add_argument(
        "--source",
        metavar="PATH",
        action="append",
        help="DICOM file or directory the instances came from (repeatable): byte equality, "
        "and what --repair ingests again",
    )
    parser.add_argument("--repair", action="store_true", help="fix what is found")
    parser.add_argument(
        "--sizes-only", action="store_true", help="check sizes only, read nothing back"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="leave objects no index names alone until this old (an ingest may be running)",
    )
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.study) == bool(args.all):
        raise UsageError("name a study, or give --all")
    if args.grace < 0:
        raise UsageError("--grace must not be negative")
    try:
        study = validate_uid(args.study, what="StudyInstanceUID") if args.study else None
    except InvalidUID as exc:
        raise UsageError(str(exc)) from None
    settings = settings_from_args(args)
    bucket = Bucket.from_settings(settings)
    bucket.check()
    layout = KeyLayout(settings.prefix)
    grace = timedelta(hours=args.grace)
    with tempfile.TemporaryDirectory(prefix="framecdn-verify-") as spool:
        reference = _reference(args, settings, Path(spool))
        report = verify(
            bucket,
            layout,
            study=study,
            reference=reference,
            check_bytes=not args.sizes_only,
            grace=grace,
            workers=max(1, settings.ingest_workers // 2),
        )
        print_findings(report, grace)
        if args.repair and report.damaged:
            if reference is None:
                repair(bucket, layout, report, grace=grace)
            else:
                with Ingestor(settings, force=True) as ingestor:
                    reingest = _reingest(reference, ingestor)
                    repair(bucket, layout, report, reingest=reingest, grace=grace)
            print_repairs(report)
    print(summary(report, repaired=args.repair))
    return 0 if report.ok else 1


def _reference(
    args: argparse.Namespace, settings: Settings, spool: Path
) -> SourceFiles | SourceInstances | None:
    """What the bucket is compared with: ``--source`` files, else the upstream, else none."""
    limits = InflateLimits(
        max_ratio=settings.ingest_max_inflate_ratio,
        max_bytes=settings.ingest_max_inflated_mb * 1024 * 1024,
    )
    if args.source:
        missing = [p for p in args.source if not os.path.exists(p)]
        if missing:
            raise UsageError(f"--source {missing[0]}: no such file or directory")
        return SourceFiles(args.source, limits)
    if settings.upstream_url:
        return SourceInstances(DicomwebSource(settings), spool, limits)
    return None


def _reingest(reference: SourceFiles | SourceInstances, ingestor: Ingestor) -> Reingest:
    """``--repair``'s re-ingest from the reference's file of an instance."""

    def reingest(key: InstanceKey) -> str | None:
        path = reference.path_of(key)
        if path is None:
            raise NoSource(describe_key(key))
        result = ingestor.ingest(path)
        if result.status in ("ingested", "metadata-only"):
            return None
        return result.reason or result.status

    return reingest


# Text ---------------------------------------------------------------------------------


def print_findings(report: VerifyReport, grace: timedelta) -> None:
    for finding in report.findings:
        label = LABELS[finding.kind]
        print(f"{label:<10} {describe_key(finding.instance)}: {finding.detail}")
    for pending in report.pending:
        what = "no index yet" if pending.generation is None else f"generation {pending.generation}"
        print(
            f"{'PENDING':<10} {describe_key(pending.instance)}: {what}, written "
            f"{pending.written:%Y-%m-%d %H:%M} UTC, within the {grace.total_seconds() / 3600:g} h "
            "grace (an ingest may be running): left alone"
        )


def print_repairs(report: VerifyReport) -> None:
    for done in report.repairs:
        label = "REPAIRED" if done.action not in ("skipped", "failed") else done.action.upper()
        print(f"{label:<10} {describe_key(done.instance)}: {done.detail}")


def summary(report: VerifyReport, *, repaired: bool) -> str:
    checked = (
        f"checked {count(report.instances, 'instance')} "
        f"({count(report.frames, 'frame')}, {human_bytes(report.bytes_read)} read back)"
    )
    if report.compared:
        checked += f", {report.compared} compared with their source"
    if report.schema_1:
        checked += (
            f"; {count(report.schema_1, 'instance')} in the schema-1 layout "
            "(served as is; ingest again to move into generations)"
        )
    if report.without_part10:
        checked += (
            f"; {count(report.without_part10, 'instance')} without a part10 object "
            "(whole-instance retrieval cannot give back their original bytes)"
        )
    damaged = report.damaged
    if not damaged:
        return f"{checked}: healthy"
    left = report.unrepaired
    if repaired:
        return (
            f"{checked}: {count(len(damaged), 'instance')} with findings, "
            f"{len(damaged) - len(left)} repaired, {len(left)} left"
        )
    return f"{checked}: {count(len(damaged), 'instance')} with findings (run with --repair)"
