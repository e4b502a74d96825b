"""``framecdn follow-orthanc``: keep the bucket filled from an Orthanc's change feed."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.contrib.logging import logging_redirect_tqdm

from framecdn.cli import Subcommands, add_storage_flags, settings_from_args
from framecdn.errors import ConfigError, FramecdnError
from framecdn.framestore.config import FOLLOW_TRIGGERS, Settings, redact_userinfo
from framecdn.framestore.upstream_auth import read_credentials_file
from framecdn.ingest.follower import Follower
from framecdn.ingest.orthanc import OrthancClient, OrthancRefused, OrthancUnavailable

log = logging.getLogger("framecdn.follow")

#: The settings this command's flags override, and each one's flag.
_SETTING_FLAGS = {
    "s3_endpoint": "--endpoint",
    "bucket": "--bucket",
    "prefix": "--prefix",
    "orthanc_url": "--url",
    "orthanc_credentials_file": "--credentials-file",
    "follow_trigger": "--trigger",
    "follow_concurrency": "--concurrency",
    "follow_modalities": "--modality",
    "follow_sop_classes": "--sop-class",
    "follow_min_frames": "--min-frames",
    "follow_shard": "--shard",
    "follow_feed_id": "--feed-id",
}


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "follow-orthanc",
        help="ingest what arrives in Orthanc, following its change feed",
        description="Follow Orthanc's /changes feed and ingest each new instance (or each "
        "stable series) into the bucket exactly as `framecdn ingest` would. The cursor is kept "
        "in the bucket, so a restart (on any machine) resumes where it stopped. Credentials "
        "come from FRAMECDN_ORTHANC_USERNAME / FRAMECDN_ORTHANC_PASSWORD or a file, never "
        "from the command line. SIGINT / SIGTERM stop it cleanly.",
    )
    parser.add_argument(
        "--url",
        dest="orthanc_url",
        help="Orthanc's REST root, e.g. http://orthanc:8042 (or FRAMECDN_ORTHANC_URL)",
    )
    parser.add_argument(
        "--credentials-file",
        dest="orthanc_credentials_file",
        metavar="FILE",
        help="file holding user:password for Orthanc",
    )
    parser.add_argument(
        "--trigger",
        dest="follow_trigger",
        choices=FOLLOW_TRIGGERS,
        help="NewInstance (default): each instance as it arrives; StableSeries: "
        "whole series once Orthanc considers them complete",
    )
    parser.add_argument(
        "--concurrency",
        dest="follow_concurrency",
        type=int,
        metavar="N",
        help="instances downloaded and ingested at once (default 2)",
    )
    parser.add_argument(
        "--modality",
        dest="follow_modalities",
        action="append",
        metavar="M",
        help="follow only this modality (repeat, or comma-separate: MG,CT)",
    )
    parser.add_argument(
        "--sop-class",
        dest="follow_sop_classes",
        action="append",
        metavar="UID",
        help="follow only this SOP Class UID (repeatable)",
    )
    parser.add_argument(
        "--min-frames",
        dest="follow_min_frames",
        type=int,
        metavar="N",
        help="follow only instances with at least N frames",
    )
    parser.add_argument(
        "--shard",
        dest="follow_shard",
        metavar="K/N",
        help="take only the instances whose SOP Instance UID hashes to K "
        "(0-based) of N; run one follower per shard",
    )
    parser.add_argument(
        "--feed-id",
        dest="follow_feed_id",
        metavar="ID",
        help="name of the cursor in the bucket (default: Orthanc's host-port)",
    )
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="first ingest everything Orthanc already holds, with a progress bar",
    )
    parser.add_argument(
        "--since",
        type=_study_date,
        metavar="YYYY-MM-DD",
        help="with --backfill: only studies dated on or after this day",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="stop when the feed has nothing new (for cron jobs and scripts); gives up with "
        "exit status 1 when Orthanc or the store fails FRAMECDN_FOLLOW_MAX_ATTEMPTS times in a "
        "row, instead of waiting for them",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def _study_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


def _split_list(values: list[str] | None) -> tuple[str, ...] | None:
    """``--modality MG --modality CT,US`` -> ``("MG", "CT", "US")``; None when not given."""
    if not values:
        return None
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def follower_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    args.follow_modalities = _split_list(args.follow_modalities)
    args.follow_sop_classes = _split_list(args.follow_sop_classes)
    return settings_from_args(args, flags=_SETTING_FLAGS)


def orthanc_credentials(settings: Settings) -> tuple[str | None, str | None]:
    """``(user, password)`` from the credentials file if set, else from the environment."""
    if settings.orthanc_credentials_file:
        path = Path(settings.orthanc_credentials_file)
        text = read_credentials_file(path, "Orthanc credentials file")
        user, colon, password = text.partition(":")
        if not colon or not user or "\n" in text:
            raise ConfigError(f"Orthanc credentials file {path} must hold one line user:password")
        return user, password
    if settings.orthanc_password and not settings.orthanc_username:
        raise ConfigError("FRAMECDN_ORTHANC_PASSWORD is set without FRAMECDN_ORTHANC_USERNAME")
    return settings.orthanc_username, settings.orthanc_password


@contextmanager
def stop_on_signals(follower: Follower) -> Iterator[None]:
    """SIGINT and SIGTERM ask the follower to stop (installed explicitly: a background job
    may start with SIGINT ignored). Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if not follower.stopping:
            log.info(
                "%s: stopping (in-flight ingests finish, the cursor is saved)",
                signal.Signals(signum).name,
            )
        follower.stop()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except FramecdnError as exc:
        print(f"framecdn follow-orthanc: {redact_userinfo(str(exc))}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.since is not None and not args.backfill:
        raise ConfigError("--since goes with --backfill (it selects studies by date)")
    settings = follower_settings(args)
    if not settings.orthanc_url:
        raise ConfigError("no Orthanc URL: pass --url or set FRAMECDN_ORTHANC_URL")
    source = "--url" if args.orthanc_url else "FRAMECDN_ORTHANC_URL"
    url = urlsplit(settings.orthanc_url)  # checked strictly by Settings (http_url)
    if url.username or url.password:
        raise ConfigError(
            f"the Orthanc URL carries credentials ({source}): put them in "
            "FRAMECDN_ORTHANC_USERNAME / FRAMECDN_ORTHANC_PASSWORD or --credentials-file "
            "(a URL shows in ps and in logs)"
        )
    username, password = orthanc_credentials(settings)
    orthanc = OrthancClient(
        settings.orthanc_url,
        username=username,
        password=password,
        timeout=settings.orthanc_timeout,
        max_connections=settings.follow_concurrency + 4,
    )
    with (
        orthanc,
        Follower(settings, orthanc, bounded=args.once) as follower,
        stop_on_signals(follower),
    ):
        follower.bucket.check()
        try:
            system = orthanc.system()
            log.info(
                "Orthanc %s (%s) at %s", system.get("Name"), system.get("Version"), orthanc.url
            )
        except OrthancRefused:
            raise
        except OrthancUnavailable as exc:
            log.warning("%s; the follower keeps trying", exc)
        if args.backfill:
            with logging_redirect_tqdm():
                follower.backfill(since=args.since, progress=False if args.no_progress else None)
        if not follower.stopping:
            follower.run(until_idle=args.once)
        print(follower.stats.summary(), flush=True)
    # A follower stopped by a signal did its job; a one-shot run says if anything failed.
    return 1 if args.once and follower.stats.failed else 0
