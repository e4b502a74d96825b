"""Shared helpers for the origin tests: a real uvicorn on a free port, ingested instances.

The origin runs in a thread of the test process (so a test can look at its state,
e.g. the S3 connection pool) and is reached over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import uvicorn
from pydicom.encaps import generate_frames
from starlette.applications import Starlette
from starlette.types import ASGIApp

from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.ingest.pipeline import ingest_file
from framecdn.origin.app import Origin, create_app
from framecdn.origin.limits import http_protocol
from framecdn.origin.markers import flush_once
from framecdn.origin.storage import ObjectStore


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server answering with ``handler``, in a thread: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def hung_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung S3): its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningOrigin:
    base: str  # http://127.0.0.1:port
    root: str  # base + DICOMweb root
    app: Starlette
    settings: Settings

    @property
    def origin(self) -> Origin:
        return self.app.state.origin

    def instance_url(self, inst: Expected) -> str:
        return (
            f"{self.root}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
        )

    def frames_url(self, inst: Expected, frames: str) -> str:
        return f"{self.instance_url(inst)}/frames/{frames}"


@contextlib.contextmanager
def run_origin(
    settings: Settings,
    *,
    public_url: bool = False,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
) -> Iterator[RunningOrigin]:
    """uvicorn serving ``create_app(settings)`` on 127.0.0.1:<free port>, in a thread.

    ``public_url=True`` configures the origin's public URL to its own address (needed by
    dicomweb-client, which sends ``Host`` without the port). ``wrap`` puts an ASGI
    wrapper between the server and the app (to watch what the app sends).
    """
    port = free_port()
    if public_url:
        settings = settings.with_overrides(public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    config = uvicorn.Config(
        wrap(app) if wrap else app,
        host="127.0.0.1", port=port, log_level="warning", access_log=False,
        loop="uvloop", http=http_protocol(settings), lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            thread.join(15)
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    root = settings.root_path.rstrip("/")
    try:
        yield RunningOrigin(base, base + root, app, settings)
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class Expected:
    """An ingested instance and its frames as pydicom reads them from the source file."""

    path: Path
    index: InstanceIndex
    frames: list[bytes]

    @property
    def study(self) -> str:
        return self.index.study_instance_uid

    @property
    def series(self) -> str:
        return self.index.series_instance_uid

    @property
    def sop(self) -> str:
        return self.index.sop_instance_uid

    @property
    def syntax(self) -> str:
        return self.index.transfer_syntax_uid


def pydicom_frames(path: Path) -> list[bytes]:
    """Each frame's DICOMweb bytes, straight from pydicom."""
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    length = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    data = ds.PixelData
    return [data[i * length : (i + 1) * length] for i in range(count)]


async def _flush(origin: Origin, settings: Settings) -> int:
    store = ObjectStore(settings)  # the app's own store belongs to the server's event loop
    try:
        return await flush_once(store, origin.recorder)
    finally:
        await store.aclose()


def flush_access_markers(running: RunningOrigin) -> int:
    """Write the origin's due access markers now (what its background task does)."""
    return asyncio.run(_flush(running.origin, running.settings))


def ingest(path: Path, settings: Settings) -> Expected:
    index = ingest_file(path, settings)
    return Expected(Path(path), index, pydicom_frames(Path(path)))
