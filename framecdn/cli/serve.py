"""``framecdn serve``: run the origin with uvicorn (an app factory, so workers > 1 work).

With an upstream (``FRAMECDN_UPSTREAM_URL``) and no fill service named
(``FRAMECDN_FILL_URL``), it also starts ``framecdn fill`` on a free loopback port as a
child process, tells its workers where it is, and stops it on the way out: the origin's
misses are filled without anything else to run. The origin never imports the ingest
side; the fill service is a process of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence

import httpx

from framecdn.cli import Subcommands, add_storage_flags, setting_help, settings_from_args
from framecdn.cli.stopping import stop_on_signals
from framecdn.errors import FramecdnError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import DELIVERY_MODES, ENVIRONMENT, Settings
from framecdn.framestore.upstream_auth import upstream_authorization
from framecdn.origin.auth import AccessControl
from framecdn.process_stop import stop_process

log = logging.getLogger("framecdn.serve")
#: Seconds the fill service may take to start.
FILL_START_SECONDS = 30.0

APP_FACTORY = "framecdn.origin.app:create_app_from_env"

#: The settings ``serve`` takes from flags; each worker reads them back from the environment.
FLAG_SETTINGS = (
    "s3_endpoint", "bucket", "prefix", "host", "port", "workers", "root_path", "delivery"
)


def register(subparsers: Subcommands) -> None:
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


def export_settings(
    settings: Settings, environ: MutableMapping[str, str], names: Sequence[str] = FLAG_SETTINGS
) -> None:
    """Write settings ``names`` (by default: what flags set) into the environment the
    workers' factory reads, each under its declared variable.

    Only what flags can set is written: secrets come from the environment already
    (there is no flag for them) and are never copied around.
    """
    for variable, (name, _) in ENVIRONMENT.items():
        if name not in names:
            continue
        value = getattr(settings, name)
        if value is None:
            continue
        environ[variable] = ",".join(value) if isinstance(value, tuple) else str(value)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fill_service(settings: Settings) -> Iterator[str | None]:
    """The fill service's URL: the configured one, or a child ``framecdn fill`` started
    here when an upstream is set (None without an upstream)."""
    if not settings.upstream_url or settings.fill_url:
        yield settings.fill_url
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "framecdn", "fill", "--host", "127.0.0.1",
               "--port", str(port)]
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + FILL_START_SECONDS
        while True:
            if child.poll() is not None:
                raise FramecdnError(f"the fill service exited at start ({child.returncode})")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise FramecdnError(f"the fill service did not answer on {url}")
            time.sleep(0.1)
        log.info("fill service started on %s (pid %d)", url, child.pid)
        yield url
    finally:
        stop_process(child, 30)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()
    settings = settings_from_args(args, *FLAG_SETTINGS)
    upstream_authorization(settings)  # unreadable upstream credentials: say so now
    Bucket.from_settings(settings).check()  # a wrong secret or bucket: say so now, exit 1
    AccessControl(settings)  # an unreadable API keys or JWKS file: say so now, not per worker
    export_settings(settings, os.environ)
    # uvicorn shuts down on a signal, then re-raises it for us: a clean stop (a signal may
    # also come while the fill service starts).
    with contextlib.suppress(KeyboardInterrupt), fill_service(settings) as fill_url:
        if fill_url:  # the child fill service's: for the workers, as if configured
            settings = settings.with_overrides(fill_url=fill_url)
            export_settings(settings, os.environ, names=("fill_url",))
        _serve(settings)
    return 0


def _serve(settings: Settings) -> None:
    """uvicorn until a signal (it shuts down, then re-raises KeyboardInterrupt: a clean stop)."""
    import uvicorn

    from framecdn.origin.limits import http_protocol

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
