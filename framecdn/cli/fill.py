"""``framecdn fill``: the read-through fill service the origin queues its misses to."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from framecdn.cli import Subcommands, add_storage_flags, setting_help, settings_from_args
from framecdn.cli.stopping import stop_on_signals
from framecdn.errors import ConfigError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import redact_userinfo
from framecdn.framestore.upstream_auth import upstream_authorization
from framecdn.ingest.fill import Filler
from framecdn.ingest.fill_service import FillServer

log = logging.getLogger("framecdn.fill")

FLAG_SETTINGS = ("s3_endpoint", "bucket", "prefix", "fill_host", "fill_port", "fill_concurrency")


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "fill",
        help="copy the instances the origin had to get from the upstream into the bucket",
        description="Run the read-through fill service: origins POST the instances they "
        "answered from the upstream (FRAMECDN_UPSTREAM_URL) to it, and it downloads each "
        "once (WADO-RS, the Part 10 file) and ingests it exactly as `framecdn ingest` does. "
        "`framecdn serve` starts one on loopback by itself when an upstream is set and "
        "FRAMECDN_FILL_URL is not; run it yourself to share one between origin hosts. "
        "SIGINT / SIGTERM stop it.",
    )
    parser.add_argument(
        "--host", dest="fill_host", help=setting_help("fill_host", "bind address")
    )
    parser.add_argument(
        "--port", dest="fill_port", type=int, help=setting_help("fill_port", "port")
    )
    parser.add_argument(
        "--concurrency",
        dest="fill_concurrency",
        type=int,
        metavar="N",
        help=setting_help("fill_concurrency", "instances filled at once"),
    )
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()
    settings = settings_from_args(args, *FLAG_SETTINGS)
    if not settings.upstream_url:
        raise ConfigError("framecdn fill needs an upstream: set FRAMECDN_UPSTREAM_URL")
    upstream_authorization(settings)  # unreadable credentials: say so now
    Bucket.from_settings(settings).check()
    with contextlib.suppress(OSError):
        os.nice(settings.fill_nice)  # fills yield the CPU to the origin
    with Filler(settings) as filler:
        server = FillServer((settings.fill_host, settings.fill_port), filler)
        log.info(
            "fill service on %s: %d at once, from %s", server.url, settings.fill_concurrency,
            redact_userinfo(settings.upstream_url),
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopping: fills in progress finish their ingest")
        finally:
            server.server_close()
    return 0
