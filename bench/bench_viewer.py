"""What the browser saw: OHIF opening and scrolling the tomosynthesis instance, by its own clock.

One run, one embedded SeaweedFS: generate and ingest a 60-frame 2457x1890 16-bit breast
tomosynthesis instance (``--small``: 8 frames 512x400, a smoke run), then for each mode

- ``stream``: the origin streams frames to the browser;
- ``accel``: the shipped nginx config in front of the origin (X-Accel-Redirect, nginx's
  object cache),

open OHIF 3.13 (the built ``@ohif/app``, as the browser tests serve it) in Debian's
Chromium at ``/viewer?StudyInstanceUIDs=S`` and scroll the instance from its first frame to
its last with the mouse wheel. One unmeasured run first makes the servers warm (S3 page
cache, the origin's index cache, nginx's cache in accel mode); each measured run then uses a
fresh browser profile, so the browser's own cache is empty every time.

Measured, per run, from the browser only:

- **open -> first framecdn request**: from the viewer page's request to OHIF's first request
  to framecdn (its study search): OHIF loading itself, not framecdn;
- **open -> first frame**: from the viewer page's request to the end of the first frame's
  response (DevTools network events);
- **open -> first image**: from navigation start to the first animation frame in which the
  viewport's canvas is no longer uniform (``performance.now()`` in a ``requestAnimationFrame``
  loop the page runs);
- **per-frame fetch**: for every frame request, time to the response headers and to the last
  byte (DevTools network events), and the body size.

Usage::

    .venv/bin/python bench/bench_viewer.py [--small] [--runs 3] [--frames 60]

It prints a table and Markdown for docs/benchmarks.md. Needs chromium, node/npm and nginx
(what the browser tests need). The numbers are the lead's to record on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import repo_root  # noqa: F401 - first: the tests' browser and nginx harnesses on sys.path

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.index import InstanceIndex
from framecdn.synthetic import write_tomosynthesis
from tests.browser_fixtures import (
    OHIF_TOUR_SEEN,
    BrowserRun,
    BrowserUnavailable,
    Exchange,
    Toolchain,
    ohif_app_config,
    prepare_toolchain,
    serve_directory,
    serve_framecdn,
    unpack_ohif,
)

MODES = ("stream", "accel")
VIEWPORT = ".cornerstone-canvas"
OPENED = f"document.querySelector('{VIEWPORT}') !== null"
#: Records, on the page's own clock, the first animation frame showing a non-uniform viewport.
WATCH_FIRST_IMAGE = f"""(() => {{
  window.__firstImage = null;
  const tick = () => {{
    const canvas = document.querySelector('{VIEWPORT}');
    const context = canvas && canvas.getContext('2d');
    if (context && canvas.width > 0) {{
      const w = Math.min(256, canvas.width), h = Math.min(256, canvas.height);
      const data = context.getImageData((canvas.width - w) >> 1, (canvas.height - h) >> 1,
                                        w, h).data;
      for (let i = 4; i < data.length; i += 4) {{
        if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) {{
          window.__firstImage = performance.now();
          return;
        }}
      }}
    }}
    requestAnimationFrame(tick);
  }};
  requestAnimationFrame(tick);
  return true;
}})()"""


def steps(frames: int) -> list[dict[str, Any]]:
    return [
        {"evaluate": WATCH_FIRST_IMAGE},
        {"waitFor": f"{OPENED} || document.body.innerText.includes('not available')",
         "timeoutMs": 120000},
        {"waitFor": "window.__firstImage !== null", "when": OPENED, "timeoutMs": 120000},
        {"evaluate": "window.__firstImage"},  # 3
        {"click": {"text": "Skip all", "optional": True}, "when": OPENED, "timeoutMs": 5000},
        {"click": {"text": "Confirm and hide", "optional": True}, "when": OPENED,
         "timeoutMs": 5000},
        {"wheel": {"selector": VIEWPORT, "deltaY": 100, "times": frames + 2, "pauseMs": 150},
         "when": OPENED},
        {"sleep": 2000},
        {"evaluate": "document.body.innerText"},  # 8
    ]


@dataclass
class Run:
    open_to_first_request_ms: float  # OHIF loaded and asked framecdn (its first search)
    open_to_first_frame_ms: float
    open_to_first_image_ms: float
    headers_ms: list[float]  # per frame: request -> response headers
    body_ms: list[float]  # per frame: request -> last byte
    bytes: list[int]


@dataclass
class ModeResult:
    mode: str
    runs: list[Run] = field(default_factory=list)


def response_timings(browser: BrowserRun) -> dict[str, dict[str, float]]:
    """DevTools' ``response.timing`` per request id (``requestTime`` in seconds on the clock
    of the events' timestamps, the rest in milliseconds after it)."""
    return {
        event["params"]["requestId"]: event["params"]["timing"]
        for event in browser.events
        if event["event"] == "network" and event["method"] == "Network.responseReceived"
        and event["params"].get("timing")
    }


def measure(browser: BrowserRun, frame_prefix: str, frames: int, root: str) -> Run:
    browser.raise_for_error()
    text = str(browser.step_value(8, ""))
    if f"({frames}/{frames})" not in text:
        raise AssertionError(f"the scroll did not reach frame {frames}:\n{browser.transcript()}")
    page = next(x for x in browser.exchanges if x.type == "Document")
    fetched = [x for x in browser.exchanges
               if x.url.startswith(frame_prefix) and not x.is_preflight]
    if len(fetched) < frames or not all(x.ok and x.finished for x in fetched):
        raise AssertionError(f"frames not all fetched 2xx:\n{browser.transcript()}")
    timings = response_timings(browser)

    def headers_at(exchange: Exchange) -> float:
        # responseReceived itself may be dispatched after loadingFinished: use its timing.
        timing = timings[exchange.request_id]
        return timing["requestTime"] + timing["receiveHeadersEnd"] / 1000

    first = min(fetched, key=lambda x: x.started)
    asked = min(x.started for x in browser.to(root))
    return Run(
        open_to_first_request_ms=(asked - page.started) * 1000,
        open_to_first_frame_ms=((first.finished or 0) - page.started) * 1000,
        open_to_first_image_ms=float(browser.step_value(3)),
        headers_ms=[(headers_at(x) - x.started) * 1000 for x in fetched],
        body_ms=[((x.finished or 0) - x.started) * 1000 for x in fetched],
        bytes=[int(x.response_header("content-length") or 0) for x in fetched],
    )


def open_and_scroll(
    toolchain: Toolchain, dist: Path, mode: str, settings: Any, index: InstanceIndex,
    work: Path, runs: int,
) -> ModeResult:
    result = ModeResult(mode)
    (work / mode).mkdir(parents=True, exist_ok=True)
    overrides: dict[str, bytes] = {}
    with contextlib.ExitStack() as stack:
        viewer = stack.enter_context(serve_directory(dist, spa=True, overrides=overrides))
        served = stack.enter_context(serve_framecdn(mode, settings, viewer, work / mode))
        overrides["/app-config.js"] = ohif_app_config(dist, served.root)
        url = f"{viewer}/viewer?StudyInstanceUIDs={index.study_instance_uid}"
        frame_prefix = (f"{served.root}/studies/{index.study_instance_uid}/series/"
                        f"{index.series_instance_uid}/instances/{index.sop_instance_uid}/frames/")
        for number in range(runs + 1):  # the first one warms the servers up
            browser = toolchain.run(url, steps(index.number_of_frames), timeout=240,
                                    user_data_dir=work / mode / f"profile-{number}",
                                    init_script=OHIF_TOUR_SEEN)
            run = measure(browser, frame_prefix, index.number_of_frames, served.root)
            label = "warm-up" if number == 0 else f"run {number}"
            print(f"  {mode} {label}: first image {run.open_to_first_image_ms:.0f} ms, "
                  f"median frame {statistics.median(run.body_ms):.0f} ms", flush=True)
            if number:
                result.runs.append(run)
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def markdown(results: list[ModeResult], frame_mb: float, frames: int, shape: str) -> str:
    lines = [
        f"OHIF 3.13 in Chromium (headless), {frames} frames of {shape} ({frame_mb:.1f} MB each), "
        "warm servers, empty browser cache; medians over runs, frame fetches pooled.",
        "",
        "| mode | open -> first framecdn request (ms) | open -> first frame (ms) | open -> first "
        "image (ms) | frame headers p50 / p90 (ms) | frame last byte p50 / p90 / max (ms) | "
        "frame MB/s (p50) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        first_request = statistics.median(r.open_to_first_request_ms for r in result.runs)
        first_frame = statistics.median(r.open_to_first_frame_ms for r in result.runs)
        first_image = statistics.median(r.open_to_first_image_ms for r in result.runs)
        headers = [v for r in result.runs for v in r.headers_ms]
        body = [v for r in result.runs for v in r.body_ms]
        rates = [b / 1e6 / (ms / 1000) for r in result.runs
                 for b, ms in zip(r.bytes, r.body_ms, strict=True) if ms > 0]
        name = "accel (nginx, warm)" if result.mode == "accel" else result.mode
        lines.append(
            f"| {name} | {first_request:.0f} | {first_frame:.0f} | {first_image:.0f} | "
            f"{percentile(headers, 0.5):.0f} / {percentile(headers, 0.9):.0f} | "
            f"{percentile(body, 0.5):.0f} / {percentile(body, 0.9):.0f} / {max(body):.0f} | "
            f"{statistics.median(rates):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true",
                        help="smoke run: 8 frames of 512x400, one measured run per mode")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rows", type=int, default=2457)
    parser.add_argument("--columns", type=int, default=1890)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per mode")
    args = parser.parse_args()
    if args.small:
        args.frames, args.rows, args.columns, args.runs = 8, 512, 400, 1
    started = datetime.now(UTC)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="framecdn-bench-viewer-") as tmp:
        work = Path(tmp)
        try:
            toolchain = prepare_toolchain(work / "probe")
            dist = unpack_ohif()
        except BrowserUnavailable as exc:
            print(f"bench_viewer: {exc}", file=sys.stderr)
            return 1
        store = EmbeddedS3(work / "s3", bucket="framecdn-bench").start()
        try:
            settings = store.settings(prefix=f"viewer-{uuid.uuid4().hex[:8]}")
            print(f"generating {args.frames} frames {args.rows}x{args.columns} ...", flush=True)
            generated = write_tomosynthesis(work / "tomo.dcm", frames=args.frames,
                                            rows=args.rows, columns=args.columns)
            from framecdn.ingest.pipeline import ingest_file  # the bench sees both sides

            index = ingest_file(generated.path, settings)
            generated.path.unlink()
            results = [open_and_scroll(toolchain, dist, mode, settings, index, work, args.runs)
                       for mode in MODES]
        finally:
            store.stop()
    print()
    shape = f"{args.columns}x{args.rows}"
    print(markdown(results, index.frames[0].size / 1e6, args.frames, shape))
    print()
    print(f"date: {started.isoformat(timespec='seconds')} (start), "
          f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    chromium = subprocess.run([toolchain.chromium, "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"{platform.platform()}, Python {platform.python_version()}, {chromium}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
