"""The OHIF viewer next to framecdn: fetched with npm, pointed at framecdn, served on loopback.

``framecdn demo --viewer`` (what ``make demo`` runs) and the browser tests use it. The npm
package ``@ohif/app`` ships a complete built OHIF under ``dist/``; only that is needed, so
it is fetched with ``npm pack`` (``npm install @ohif/app`` cannot resolve its dependencies
from every registry: some lack ``@ohif/i18n`` of the same version), checked against the
pinned integrity and unpacked once into a cache directory. Its ``app-config.js`` is
replaced, from memory, by one whose single DICOMweb data source is framecdn. OHIF is a
single-page app: the server answers ``index.html`` for every path that is not a file.

This is the face layer (like the CLI): it imports neither the origin nor ingest.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from framecdn.errors import FramecdnError

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
NPM_TIMEOUT = 900
#: The DICOMweb server OHIF's shipped app-config.js points at (its public demo).
OHIF_DEMO_ROOT = "https://d14fa38qiwhyfd.cloudfront.net/dicomweb"
#: How OHIF's study browser gets thumbnails (its ``thumbnailRendering``): from frames like
#: the viewport (``wadors``), or framecdn's ``.../thumbnail`` as a plain ``<img>`` URL
#: (``thumbnailDirect``: no request headers, so not with access control on).
THUMBNAIL_RENDERINGS = ("wadors", "thumbnailDirect", "thumbnail")
GET_NPM = "install Node.js 20+ with npm (e.g. `apt-get install nodejs npm`, or https://nodejs.org)"


class ViewerUnavailable(FramecdnError):
    """OHIF cannot be fetched here (no npm, no registry, a changed package)."""


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerUnavailable(f"npm not found: {GET_NPM}")
    return npm


def fetch_ohif(cache_dir: Path) -> Path:
    """OHIF's built viewer (``dist/``), fetched once into ``cache_dir/ohif/<version>/``."""
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    out = cache_dir / "ohif" / OHIF_VERSION
    stamp = out / ".integrity"
    if stamp.exists() and stamp.read_text() == OHIF_INTEGRITY:
        return out / "dist"
    npm = _npm()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        argv = [npm, "pack", spec, "--pack-destination", tmp, "--silent"]
        try:
            done = subprocess.run(
                argv, cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT,
                stdin=subprocess.DEVNULL, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ViewerUnavailable(f"npm pack {spec} did not run: {exc}") from exc
        if done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            raise ViewerUnavailable(f"npm pack {spec} failed ({done.returncode}): {last[0]}")
        (tarball,) = Path(tmp).glob("*.tgz")
        algorithm, expected = OHIF_INTEGRITY.split("-", 1)
        actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
        if actual != expected:
            raise ViewerUnavailable(f"{spec}: integrity {algorithm}-{actual} is not the pinned one")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        with tarfile.open(tarball) as archive:
            archive.extractall(Path(tmp) / "x", filter="data")
        (Path(tmp) / "x" / "package" / "dist").rename(out / "dist")
    stamp.write_text(OHIF_INTEGRITY)
    return out / "dist"


@dataclass(frozen=True)
class OpenIdClient:
    """OHIF's own OpenID Connect login (its app-config ``oidc`` block, the keys as OHIF 3.13
    reads them): authorization code with PKCE at ``authority`` (the issuer; OHIF reads its
    ``/.well-known/openid-configuration``), as the public client ``client_id``. OHIF then
    sends ``Authorization: Bearer <access token>`` with every DICOMweb request. The URIs
    are paths on the viewer's own origin (OHIF makes them absolute); ``redirect_uri`` must
    be registered with the provider."""

    authority: str
    client_id: str
    scope: str = "openid"
    redirect_uri: str = "/callback"
    post_logout_redirect_uri: str = "/"
    response_type: str = "code"


def app_config(
    dist: Path, root: str, *, thumbnails: str = "wadors", oidc: OpenIdClient | None = None
) -> bytes:
    """OHIF's own ``app-config.js`` with its one DICOMweb data source pointed at ``root``
    (QIDO, WADO-RS and WADO-URI roots) and ``thumbnails`` as its thumbnailRendering; every
    other setting is OHIF's default (lazy study loading, unquoted multipart Accept, ...).

    OHIF 3.13's DICOMweb data source takes its Authorization header from the user
    authentication service only (its ``requestOptions`` are no longer read), which its
    OIDC login fills (``oidc``: OHIF then logs in before it opens anything), or the viewer
    URL's ``token`` parameter (see :func:`study_url`)."""
    if thumbnails not in THUMBNAIL_RENDERINGS:
        raise ValueError(f"thumbnails must be one of {', '.join(THUMBNAIL_RENDERINGS)}")
    text = (dist / "app-config.js").read_text()
    replacements = {
        f"wadoUriRoot: '{OHIF_DEMO_ROOT}'": f"wadoUriRoot: '{root}'",
        f"qidoRoot: '{OHIF_DEMO_ROOT}'": f"qidoRoot: '{root}'",
        f"wadoRoot: '{OHIF_DEMO_ROOT}'": f"wadoRoot: '{root}'",
        "thumbnailRendering: 'thumbnail'": f"thumbnailRendering: '{thumbnails}'",
        "friendlyName: 'AWS S3 Static wado server'": "friendlyName: 'framecdn'",
    }
    if oidc is not None:
        block = json.dumps([dataclasses.asdict(oidc)])  # JSON is JavaScript
        replacements["window.config = {"] = f"window.config = {{\n  oidc: {block},"
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise ViewerUnavailable(f"OHIF's app-config.js changed: {old!r} is not there once")
        text = text.replace(old, new)
    if OHIF_DEMO_ROOT in text:
        raise ViewerUnavailable("OHIF's app-config.js still points at its demo server")
    return text.encode()


# Serving -----------------------------------------------------------------------------------

MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",  # compileStreaming insists on it
    ".json": "application/json",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Files of one folder; unknown paths answer index.html (a single-page app); some
    paths answered from memory (OHIF's app-config.js)."""

    def __init__(self, *args: Any, overrides: Mapping[str, bytes], spa: bool,
                 **kwargs: Any) -> None:
        self.overrides = overrides
        self.spa = spa
        self.extensions_map = {**self.extensions_map, **MEDIA_TYPES}
        super().__init__(*args, **kwargs)  # handles the request

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self) -> Any:
        path = urlsplit(self.path).path
        if path in self.overrides:
            body = self.overrides[path]
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return _BytesFile(body)
        if self.spa and not Path(self.translate_path(self.path)).exists():
            self.path = "/index.html"
        return super().send_head()


class _BytesFile:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def read(self, size: int = -1) -> bytes:
        body, self.body = self.body, b""
        return body

    def close(self) -> None:
        pass


@contextlib.contextmanager
def serve_directory(
    directory: Path,
    *,
    overrides: Mapping[str, bytes] | None = None,
    spa: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[str]:
    """A static server for ``directory`` on ``host:port`` (0: a free port); yields its base URL.

    ``overrides`` (path -> body) is read at each request, so a caller may fill it once it
    knows what to put there (OHIF's config needs framecdn's URL, framecdn needs ours)."""
    handler = partial(_StaticHandler, directory=str(directory),
                      overrides=overrides if overrides is not None else {}, spa=spa)
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="viewer", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def serve_ohif(
    cache_dir: Path, root: str, *, port: int = 0, thumbnails: str = "thumbnailDirect"
) -> Iterator[str]:
    """OHIF (fetched into ``cache_dir`` if needed) for the DICOMweb ``root``, on loopback;
    yields its base URL. Raises ViewerUnavailable (one line) when it cannot be had."""
    dist = fetch_ohif(cache_dir)
    config = {"/app-config.js": app_config(dist, root, thumbnails=thumbnails)}
    with serve_directory(dist, overrides=config, spa=True, port=port) as base:
        yield base


def study_url(viewer: str, study_uid: str, token: str | None = None) -> str:
    """The viewer URL that opens one study; ``token``: OHIF sends it as a bearer token with
    every DICOMweb request (and removes it from the address bar at once)."""
    url = f"{viewer}/viewer?StudyInstanceUIDs={study_uid}"
    return f"{url}&token={token}" if token else url

