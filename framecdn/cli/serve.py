"""``framecdn serve``: run the origin with uvicorn (an app factory, so workers > 1 work)."""

from __future__ import annotations

import argparse
import importlib.util
import os

from framecdn.cli import add_storage_flags, settings_from_args
from framecdn.framestore.config import DELIVERY_MODES, ENVIRONMENT, Settings

APP_FACTORY = "framecdn.origin.app:create_app_from_env"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOMweb frame origin",
        description="Serve WADO-RS frames and metadata from the bucket (uvicorn). "
        "Settings come from FRAMECDN_* / AWS_* variables; flags override them.",
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument("--root-path", dest="root_path", help="DICOMweb root (default /dicom-web)")
    parser.add_argument("--delivery", choices=DELIVERY_MODES, help="frame delivery mode")
    add_storage_flags(parser)
    parser.set_defaults(handler=run)


def export_settings(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> None:
    """Write the effective settings into the environment the workers' factory reads."""
    for variable, (name, _) in ENVIRONMENT.items():
        value = getattr(settings, name)
        if value is None:
            continue
        environ[variable] = ",".join(value) if isinstance(value, tuple) else str(value)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_from_args(
        args, "s3_endpoint", "bucket", "prefix", "host", "port", "workers", "root_path", "delivery"
    )
    export_settings(settings, os.environ)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        access_log=False,  # framecdn.access logs one JSON line per request instead
        proxy_headers=True,
        timeout_keep_alive=30,
    )
    return 0
