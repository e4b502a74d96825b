"""``framecdn verify [STUDY | --all]``: the bucket checked against its indexes, and repaired.

The checking and repairing live in :mod:`framecdn.maintenance.verify`, which never
imports ingest. What needs ingest is wired here, the one place that sees both: the true
frames of an instance, from its source file (``--source``) or from the upstream PACS
(``FRAMECDN_UPSTREAM_URL``), split by the ingest splitter; and ``--repair``'s re-ingest.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.cli.units import count, human_bytes
from framecdn.errors import FramecdnError, UsageError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.index import FrameEntry
from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout, validate_uid
from framecdn.ingest.pipeline import Ingestor, iter_sources
from framecdn.ingest.splitter import InflateLimits, InvalidInstance, open_instance
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
    "orphan": "ORPHAN",
    "old-generation": "OLD",
    "unreadable": "UNREADABLE",
}
_CHUNK = 8 << 20


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


# The true frames ------------------------------------------------------------------------


def file_frames(path: Path, limits: InflateLimits) -> tuple[InstanceKey, list[FrameEntry]]:
    """An instance file's key and each frame's size and SHA-256 (read in chunks)."""
    with open_instance(path, limits=limits) as split:
        ds = split.dataset
        key = InstanceKey(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
        frames = []
        for reader in split.frame_readers():
            digest = hashlib.sha256()
            for chunk in reader.chunks(_CHUNK):
                digest.update(chunk)
            frames.append(FrameEntry(reader.size, digest.hexdigest()))
    return key, frames


class SourceFiles:
    """The instances in the files named (directories searched): what they truly hold."""

    def __init__(self, paths: list[str], limits: InflateLimits) -> None:
        self.limits = limits
        self._paths = [p for p in iter_sources(paths) if p.is_file()]
        self._where: dict[InstanceKey, Path] | None = None

    def path_of(self, key: InstanceKey) -> Path | None:
        if self._where is None:
            self._where = dict(self._scan())
        return self._where.get(key)

    def _scan(self) -> Iterator[tuple[InstanceKey, Path]]:
        for path in self._paths:
            try:
                with open_instance(path, limits=self.limits) as split:
                    ds = split.dataset
                    key = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
                yield InstanceKey(*(str(uid) for uid in key)), path
            except (InvalidInstance, InvalidUID, OSError, FramecdnError) as exc:
                print(f"framecdn verify: {path}: not a source ({exc})", file=sys.stderr)

    def frames(self, key: InstanceKey) -> list[FrameEntry] | None:
        path = self.path_of(key)
        return None if path is None else file_frames(path, self.limits)[1]


class UpstreamInstances:
    """The instances as the upstream PACS holds them (``FRAMECDN_UPSTREAM_URL``).

    Each is downloaded (WADO-RS, the stored Part 10 file) to a temporary file and split
    like a source file. The download client is the upstream fill's
    (``framecdn.ingest.dicomweb_source``, issue #9); a build without it says so.
    """

    def __init__(self, settings: Settings, spool: Path, limits: InflateLimits) -> None:
        try:
            module: Any = importlib.import_module("framecdn.ingest.dicomweb_source")
        except ModuleNotFoundError:
            raise UsageError(
                "comparing with FRAMECDN_UPSTREAM_URL needs the upstream client, not in this "
                "build: give --source instead"
            ) from None
        self._source = module.DicomwebSource(settings)
        self._gone: type[Exception] = module.InstanceGone
        self.spool = spool
        self.limits = limits
        self._files: dict[InstanceKey, Path | None] = {}

    def path_of(self, key: InstanceKey) -> Path | None:
        if key not in self._files:
            path = self.spool / f"{key.instance}.dcm"
            try:
                with open(path, "wb") as out:
                    self._source.download(key, out)
            except self._gone:
                path.unlink(missing_ok=True)
                self._files[key] = None
            else:
                self._files[key] = path
        return self._files[key]

    def frames(self, key: InstanceKey) -> list[FrameEntry] | None:
        path = self.path_of(key)
        return None if path is None else file_frames(path, self.limits)[1]


def _reference(
    args: argparse.Namespace, settings: Settings, spool: Path
) -> SourceFiles | UpstreamInstances | None:
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
        return UpstreamInstances(settings, spool, limits)
    return None


def _reingest(reference: SourceFiles | UpstreamInstances, ingestor: Ingestor) -> Reingest:
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
