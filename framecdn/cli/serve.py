"""``framecdn serve``: run the origin with uvicorn (an app factory, so workers > 1 work)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
from collections.abc import MutableMapping

from framecdn.cli import add_storage_flags, setting_help, settings_from_args
from framecdn.cli.stopping import stop_on_signals
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import DELIVERY_MODES, ENVIRONMENT, Settings
from framecdn.origin.auth import AccessControl

APP_FACTORY = "framecdn.origin.app:create_app_from_env"

#: The settings ``serve`` takes from flags; each worker reads them back from the environment.
FLAG_SETTINGS = (
    "s3_endpoint", "bucket", "prefix", "host", "port", "workers", "root_path", "delivery"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOMweb frame origin",
        description="Serve WADO-RS frames and metadata from the bucket (uvicorn). "
        "Settings come from FRAMECDN_* / AWS_* variables; flags override them. The bucket "
        "and credentials are checked before the server starts.",
    )
    parser.add_argument("--host", help=setting_help("host", "bind address"))
    parser.add_argument("--port", type=int, help=setting_help("port", "port"))
    parser.add_argument("--workers", type=int, help=setting_help("workers", "worker processes"))
    parser.add_argument(
        "--root-path", dest="root_path", help=setting_help("root_path", "DICOMweb root")
    )
    parser.add_argument(
        "--delivery",
        choices=DELIVERY_MODES,
        help=setting_help("delivery", "frame delivery mode"),
    )
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def export_settings(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Write the flag-given settings into the environment the workers' factory reads.

    Only what flags can set is written: secrets come from the environment already
    (there is no flag for them) and are never copied around.
    """
    for variable, (name, _) in ENVIRONMENT.items():
        if name not in FLAG_SETTINGS:
            continue
        value = getattr(settings, name)
        if value is None:
            continue
        environ[variable] = ",".join(value) if isinstance(value, tuple) else str(value)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from framecdn.origin.limits import http_protocol

    stop_on_signals()
    settings = settings_from_args(args, *FLAG_SETTINGS)
    Bucket.from_settings(settings).check()  # a wrong secret or bucket: say so now, exit 1
    AccessControl(settings)  # an unreadable API keys or JWKS file: say so now, not per worker
    export_settings(settings, os.environ)
    # uvicorn shuts down on the signal, then re-raises it for us: a clean stop.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http=http_protocol(settings),  # httptools, with bounded request heads (431)
            access_log=False,  # framecdn.access logs one JSON line per request instead
            proxy_headers=True,
            timeout_keep_alive=30,
        )
    return 0
