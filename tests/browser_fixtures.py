"""Real browsers for the tests: Debian's Chromium driven by playwright-core, reporting back.

The npm side lives in ``tests/browser/`` (package.json and package-lock.json pinned exactly):
``npm ci`` installs it once into ``tests/browser/node_modules`` (again only when the lock
changes), vite builds the Cornerstone3D decode page once into ``tests/browser/.build/``, and
the built OHIF viewer is taken from the ``@ohif/app`` tarball by :mod:`framecdn.viewer` (which
pins its version and integrity, and serves it for ``framecdn demo --viewer`` too), unpacked
into ``tests/browser/.build/ohif/``.

A test runs the browser through ``tests/browser/driver.mjs``: the job goes in as JSON on stdin,
the browser's own events (DevTools network events, preflights included; console messages; page
errors; values the page computed) come back as JSON lines. The driver and every process it
started are killed if it outlives its time.

Under CI (the ``CI`` environment variable set) a browser or npm that cannot start fails the
test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid

from framecdn.framestore.config import Settings
from framecdn.viewer import OpenIdClient, ViewerUnavailable, app_config, fetch_ohif
from framecdn.viewer import serve_directory as serve_directory  # the tests serve pages with it
from tests.nginx_fixtures import nginx_binary_or_none, run_nginx
from tests.origin_fixtures import run_origin

REPO = Path(__file__).resolve().parent.parent
BROWSER_DIR = REPO / "tests" / "browser"
BUILD_DIR = BROWSER_DIR / ".build"
CORNERSTONE_SOURCES = BROWSER_DIR / "cornerstone"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = "/usr/bin/chromium"
NPM_TIMEOUT = 900
BUILD_TIMEOUT = 600


class BrowserUnavailable(Exception):
    """npm, the build or Chromium cannot start here (a skip, or a failure under CI)."""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        raise pytest.fail.Exception(f"browser tests cannot run under CI: {reason}", pytrace=False)
    raise pytest.skip.Exception(reason)


# The toolchain ---------------------------------------------------------------------------


def _digest(*paths: Path) -> str:
    """SHA-256 over files (and the files under directories), names included."""
    sha = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            sha.update(str(file.relative_to(BROWSER_DIR)).encode() + b"\0")
            sha.update(file.read_bytes())
    return sha.hexdigest()


def _run(argv: list[str], what: str, timeout: float, env: Mapping[str, str] | None = None) -> None:
    try:
        done = subprocess.run(
            argv, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrowserUnavailable(f"{what} did not run: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise BrowserUnavailable(f"{what} failed ({done.returncode}):\n" + "\n".join(tail))


def install_node_modules() -> Path:
    """``npm ci`` into tests/browser/node_modules, unless it already matches package-lock."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise BrowserUnavailable("node/npm not found (install Node 20+ and npm)")
    modules = BROWSER_DIR / "node_modules"
    stamp = modules / ".framecdn-lock-sha256"
    wanted = _digest(BROWSER_DIR / "package-lock.json")
    if stamp.exists() and stamp.read_text() == wanted:
        return modules
    # No install scripts: nothing here needs one, and none may download a browser.
    _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], "npm ci", NPM_TIMEOUT)
    stamp.write_text(wanted)
    return modules


def build_cornerstone_page() -> Path:
    """The vite build of tests/browser/cornerstone/, rebuilt only when its inputs change."""
    out = BUILD_DIR / "cornerstone"
    stamp = BUILD_DIR / "cornerstone.sha256"
    wanted = _digest(BROWSER_DIR / "package-lock.json", CORNERSTONE_SOURCES)
    if stamp.exists() and stamp.read_text() == wanted and (out / "index.html").exists():
        return out
    BUILD_DIR.mkdir(exist_ok=True)
    vite = str(BROWSER_DIR / "node_modules" / ".bin" / "vite")
    config = str(CORNERSTONE_SOURCES / "vite.config.js")
    _run(
        [vite, "build", "--config", config], "vite build of the Cornerstone page",
        BUILD_TIMEOUT, env={"FRAMECDN_CORNERSTONE_OUT": str(out)},
    )
    stamp.write_text(wanted)
    return out


def unpack_ohif() -> Path:
    """OHIF's built viewer (``@ohif/app``'s ``dist/``), fetched by :mod:`framecdn.viewer`
    with ``npm pack`` and checked against the pinned integrity; unpacked once into
    tests/browser/.build/ohif/."""
    try:
        return fetch_ohif(BUILD_DIR)
    except ViewerUnavailable as exc:
        raise BrowserUnavailable(str(exc)) from exc


#: OHIF's first-visit tour (a modal overlay over the viewport, which takes the mouse) is
#: shown unless its id is listed in localStorage; a slow machine may show it after any step.
OHIF_TOUR_SEEN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"


def ohif_app_config(
    dist: Path, root: str, *, thumbnails: str = "wadors", oidc: OpenIdClient | None = None
) -> bytes:
    """OHIF's own ``app-config.js`` pointed at ``root`` (see :func:`framecdn.viewer.app_config`):
    thumbnails rendered from frames unless ``thumbnails`` says otherwise; OHIF's own OIDC
    login with ``oidc``."""
    return app_config(dist, root, thumbnails=thumbnails, oidc=oidc)


def copy_with_new_uids(source: str | Path, target: Path) -> Path:
    """pydicom's test files share UIDs: give each copy its own (pixel data untouched)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


@dataclass(frozen=True)
class Toolchain:
    """What a browser test needs: node, the installed packages, Chromium."""

    node: str
    chromium: str
    modules: Path

    def run(self, url: str, steps: list[dict[str, Any]], *, timeout: float = 120,
            user_data_dir: Path, viewport: Mapping[str, int] | None = None,
            init_script: str | None = None) -> BrowserRun:
        return run_browser(self, url, steps, timeout=timeout, user_data_dir=user_data_dir,
                           viewport=viewport, init_script=init_script)


def prepare_toolchain(probe_dir: Path) -> Toolchain:
    """npm packages installed and Chromium started once (about:blank) to prove it can."""
    node = shutil.which("node")
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    modules = install_node_modules()
    assert node is not None
    toolchain = Toolchain(node, CHROMIUM, modules)
    probe = run_browser(toolchain, "about:blank", [], timeout=60, user_data_dir=probe_dir)
    if probe.launch_error is not None:
        raise BrowserUnavailable(f"Chromium did not start: {probe.launch_error}")
    probe.raise_for_error()
    return toolchain


# Running the browser -----------------------------------------------------------------------


@dataclass
class Exchange:
    """One request the browser sent and what came back (one hop of a redirect chain)."""

    request_id: str
    url: str
    method: str
    type: str | None
    request_headers: dict[str, str]
    started: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    finished: float | None = None
    received: float | None = None
    error: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A request header as sent (DevTools' extra info first: it has what the network saw)."""
        for headers in (self.extra_headers, self.request_headers):
            for key, value in headers.items():
                if key.lower() == name.lower():
                    return value
        return None

    def response_header(self, name: str) -> str | None:
        for key, value in self.response_headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def ok(self) -> bool:
        """Answered 2xx (and the body arrived)."""
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def is_preflight(self) -> bool:
        return self.type == "Preflight" or self.method == "OPTIONS"

    def __str__(self) -> str:
        outcome = self.error if self.error else self.status
        return f"{self.method} {self.url} [{self.type}] -> {outcome}"


@dataclass
class BrowserRun:
    events: list[dict[str, Any]]
    exchanges: list[Exchange]
    returncode: int | None

    @property
    def launch_error(self) -> str | None:
        for event in self.events:
            if event["event"] == "error" and event.get("stage") == "launch":
                return str(event["message"])
        return None

    @property
    def error(self) -> str | None:
        for event in self.events:
            if event["event"] == "error":
                return str(event["message"])
        if not any(event["event"] == "done" for event in self.events):
            return f"driver ended without finishing (exit {self.returncode})"
        return None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise AssertionError(f"browser run failed: {self.error}\n{self.transcript()}")

    def step_value(self, index: int, default: Any = KeyError) -> Any:
        """What step ``index`` evaluated (``default`` if it was skipped or never ran)."""
        for event in self.events:
            if event["event"] == "step" and event["index"] == index and "value" in event:
                return event["value"]
        if default is KeyError:
            raise KeyError(f"no value for step {index}")
        return default

    @property
    def console_errors(self) -> list[str]:
        found = [f"console.error: {e['text']}" for e in self.events
                 if e["event"] == "console" and e["type"] == "error"]
        found += [f"page error: {e['message']}" for e in self.events if e["event"] == "pageerror"]
        return found

    def to(self, base: str) -> list[Exchange]:
        """Exchanges with the server at ``base`` (scheme://host:port), in the order sent."""
        origin = urlsplit(base)
        return [x for x in self.exchanges
                if urlsplit(x.url)[:2] == (origin.scheme, origin.netloc)]

    def transcript(self, limit: int = 80) -> str:
        lines = [str(x) for x in self.exchanges[-limit:]]
        lines += [f"console.{e['type']}: {e['text'][:300]}" for e in self.events
                  if e["event"] == "console" and e["type"] in ("error", "warning")][-limit:]
        lines += [f"pageerror: {e['message'][:500]}" for e in self.events
                  if e["event"] == "pageerror"]
        return "\n".join(lines)


def assemble_exchanges(events: list[dict[str, Any]]) -> list[Exchange]:
    """DevTools network events -> one Exchange per request hop, in the order sent."""
    exchanges: list[Exchange] = []
    current: dict[str, Exchange] = {}
    early_extra: dict[str, list[dict[str, str]]] = {}  # extra info may come before its request
    for event in events:
        if event["event"] != "network":
            continue
        method, params = event["method"], event["params"]
        rid = params["requestId"]
        exchange = current.get(rid)
        if method == "Network.requestWillBeSent":
            redirect = params.get("redirectResponse")
            if exchange is not None and redirect is not None:  # the previous hop ends here
                exchange.status = redirect["status"]
                exchange.response_headers = redirect["headers"]
                exchange.finished = params["timestamp"]
            exchange = Exchange(rid, params["url"], params["method"], params.get("type"),
                                params["headers"], params["timestamp"])
            if early_extra.get(rid):
                exchange.extra_headers = early_extra[rid].pop(0)
            current[rid] = exchange
            exchanges.append(exchange)
        elif method == "Network.requestWillBeSentExtraInfo":
            if exchange is not None and not exchange.extra_headers:
                exchange.extra_headers = params["headers"]
            else:
                early_extra.setdefault(rid, []).append(params["headers"])
        elif exchange is None:
            continue
        elif method == "Network.responseReceived":
            exchange.status = params["status"]
            exchange.response_headers = params["headers"]
            exchange.received = params["timestamp"]
            exchange.type = exchange.type or params.get("type")
        elif method == "Network.loadingFinished":
            exchange.finished = params["timestamp"]
        elif method == "Network.loadingFailed":
            cors = params.get("corsErrorStatus")
            reasons = [params.get("errorText"), params.get("blockedReason"),
                       json.dumps(cors) if cors else None]
            exchange.error = " ".join(r for r in reasons if r)
            exchange.finished = params["timestamp"]
    return exchanges


def _kill_tree(process: subprocess.Popen[bytes], descendants: list[psutil.Process]) -> None:
    """Stop the driver politely (Playwright then closes Chromium), then kill what is left.

    Chromium runs in a process group of its own, so the tree is collected by parentage
    before anything is signalled (an orphan would be reparented and lost)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
    for proc in [*descendants, psutil.Process(process.pid) if process.poll() is None else None]:
        if proc is None:
            continue
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if process.poll() is None:
        process.wait(5)


def run_browser(
    toolchain: Toolchain,
    url: str,
    steps: list[dict[str, Any]],
    *,
    timeout: float,
    user_data_dir: Path,
    viewport: Mapping[str, int] | None = None,
    init_script: str | None = None,
    grace: float = 60,
) -> BrowserRun:
    """Open ``url`` in a fresh Chromium profile, run ``steps``, return what the browser saw.

    ``init_script`` runs in every page before the page's own scripts. The driver times its
    own steps out after ``timeout``; if it is still running ``grace`` seconds later, it and
    every process under it (Chromium) are killed."""
    job = {
        "executable": toolchain.chromium,
        "userDataDir": str(user_data_dir),
        "url": url,
        "timeoutMs": int(timeout * 1000),
        "viewport": dict(viewport or {"width": 1280, "height": 800}),
        "steps": steps,
        "initScript": init_script,
    }
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [toolchain.node, str(DRIVER)], stdin=subprocess.PIPE, stdout=out, stderr=err,
            cwd=BROWSER_DIR, start_new_session=True,
        )
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(job).encode())
            process.stdin.close()
            process.wait(timeout + grace)
        except subprocess.TimeoutExpired:
            pass
        finally:
            descendants: list[psutil.Process] = []
            if process.poll() is None:
                with contextlib.suppress(psutil.Error):
                    descendants = psutil.Process(process.pid).children(recursive=True)
            _kill_tree(process, descendants)
        out.seek(0)
        events = [json.loads(line) for line in out.read().decode().splitlines() if line.strip()]
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    if stderr and not any(e["event"] == "done" for e in events):
        events.append({"event": "error", "stage": "driver", "message": stderr[-3000:]})
    return BrowserRun(events, assemble_exchanges(events), process.returncode)


# Serving pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedFramecdn:
    root: str  # the DICOMweb root the browser uses
    origin: str  # the origin's own base URL (its /metrics), behind nginx in accel mode


@contextlib.contextmanager
def serve_framecdn(
    mode: str, settings: Settings, page_origin: str, directory: Path
) -> Iterator[ServedFramecdn]:
    """framecdn as a browser reaches it: the origin itself (``stream``, ``redirect``) or the
    shipped nginx config in front of it (``accel``). Only ``page_origin`` is allowed by
    CORS, so the browser's own CORS checks apply."""
    settings = settings.with_overrides(delivery=mode, cors_origins=(page_origin,))
    if mode != "accel":
        with run_origin(settings, public_url=True) as origin:
            yield ServedFramecdn(origin.root, origin.base)
        return
    binary = nginx_binary_or_none()
    if binary is None:
        raise BrowserUnavailable("nginx not found (apt-get install nginx) for the accel mode")
    with (
        run_origin(settings) as origin,
        run_nginx(binary, directory, origin.base, settings) as nginx,
    ):
        yield ServedFramecdn(nginx.root, origin.base)
