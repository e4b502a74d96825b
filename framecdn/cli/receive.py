"""``framecdn receive``: a DICOM C-STORE receiver that ingests into the bucket."""

from __future__ import annotations

import argparse
import logging
import threading

from prometheus_client import start_http_server

from framecdn.cli import Subcommands, add_storage_flags, setting_help, settings_from_args
from framecdn.cli.stopping import ignore_signals, stop_on_signals
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.ingest.pipeline import Ingestor
from framecdn.receive.callers import Callers
from framecdn.receive.metrics import ReceiveMetrics
from framecdn.receive.spool import Spool
from framecdn.receive.storescp import StoreSCP

log = logging.getLogger("framecdn.receive")

_SETTING_FLAGS = {
    "s3_endpoint": "--endpoint",
    "bucket": "--bucket",
    "prefix": "--prefix",
    "receive_ae_title": "--ae-title",
    "receive_host": "--host",
    "receive_port": "--port",
}


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "receive",
        help="receive instances over DICOM C-STORE into the bucket",
        description="A DICOM Storage SCP (C-STORE, and C-ECHO) for a PACS or a modality "
        "to send to: each instance is written to a spool file as it arrives, ingested "
        "exactly as `framecdn ingest` would, and acknowledged only once committed; a "
        "failure status otherwise, so the sender retries. Calling AE titles and their "
        "sites come from FRAMECDN_RECEIVE_CALLING_AES. SIGINT / SIGTERM stop it.",
    )
    parser.add_argument(
        "--ae-title", dest="receive_ae_title",
        help=setting_help("receive_ae_title", "called AE title"),
    )
    parser.add_argument(
        "--host", dest="receive_host", help=setting_help("receive_host", "bind address")
    )
    parser.add_argument(
        "--port", dest="receive_port", type=int, help=setting_help("receive_port", "DICOM port")
    )
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, flags=_SETTING_FLAGS)
    callers = Callers.of(settings, settings, settings)
    bucket = Bucket.from_settings(settings, max_connections=settings.ingest_workers + 4)
    bucket.check()
    ingestors = {
        prefix: Ingestor(_with_prefix(settings, prefix), bucket)
        for prefix in callers.all_prefixes()
    }
    metrics = ReceiveMetrics()
    spool = Spool(settings.receive_spool_dir, stale_after=2 * settings.receive_timeout)
    spool.prepare()
    scp = StoreSCP(settings, callers, ingestors, spool, metrics)
    if settings.receive_metrics_port:
        start_http_server(
            settings.receive_metrics_port, settings.receive_host, registry=metrics.registry
        )
    stop_on_signals()
    scp.start()
    who = "any calling AE title" if callers.open else ", ".join(callers.titles)
    log.info(
        "receiving as %s on %s:%d from %s into bucket %s",
        settings.receive_ae_title, settings.receive_host, scp.port, who, settings.bucket,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        ignore_signals()
        log.info("stopping: instances in flight are not acknowledged (their senders retry)")
    finally:
        scp.stop()
        for ingestor in ingestors.values():
            ingestor.close()
    return 0


def _with_prefix(settings: Settings, prefix: str) -> Settings:
    """The settings of an ingestor that writes under ``prefix`` (a caller's site)."""
    return settings.with_overrides(prefix=prefix)
