"""``framecdn demo --viewer`` end to end: the printed URL opens the demo study in OHIF.

The demo runs as a person starts it (a subprocess, a small generated study through its
flags), serving the origin and OHIF; Chromium opens the URL it printed. From the browser's
own network events and the page: every request to framecdn answered 2xx, the frames came
from framecdn, the study browser's thumbnail is framecdn's ``.../thumbnail`` (OHIF's
``thumbnailDirect``), no error notification, and the viewport shows the image. The
screenshot goes to ``FRAMECDN_DEMO_SCREENSHOT`` when set: ``make screenshot`` refreshes the
README's ``docs/ohif-demo.png`` that way, with the demo's own full-size study.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.browser_fixtures import BUILD_DIR, OHIF_TOUR_SEEN, REPO, Toolchain
from tests.origin_fixtures import free_port
from tests.processes import running
from tests.test_cli_s3 import ignore_sigint, read_until, wait_gone

pytest_plugins = ["tests.browser_plugin"]

SMALL = ["--frames", "6", "--rows", "256", "--columns", "200"]
VIEWPORT = ".cornerstone-canvas"
OPENED = f"document.querySelector('{VIEWPORT}') !== null"
CANVAS_RANGE = f"""(() => {{
  const canvas = document.querySelector('{VIEWPORT}');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let min = 255, max = 0;
  for (let i = 0; i < data.length; i += 4) {{
    const v = data[i] + data[i + 1] + data[i + 2];
    if (v < min) min = v;
    if (v > max) max = v;
  }}
  return {{min, max}};
}})()"""
THUMBNAILS = """[...document.querySelectorAll('img')]
  .filter(img => img.src.includes('/thumbnail'))
  .map(img => ({src: img.src, complete: img.complete, width: img.naturalWidth}))"""
ERROR_TOASTS = "document.querySelectorAll('[data-sonner-toast][data-type=\"error\"]').length"


def steps(frames: int) -> list[dict[str, object]]:
    """Open, see the first image and the thumbnail, scroll to the middle frame (the one the
    thumbnail shows), close OHIF's notices, look."""
    middle = (frames + 1) // 2
    close_notices = [  # the visible ones: a finished tour step stays in the page, hidden
        {"click": {"selector": "text=Skip all >> visible=true", "optional": True},
         "when": OPENED, "timeoutMs": 3000},
        {"click": {"selector": "text=Confirm and hide >> visible=true", "optional": True},
         "when": OPENED, "timeoutMs": 3000},
    ]
    return [
        {"waitFor": f"{OPENED} || document.body.innerText.includes('not available')",
         "timeoutMs": 90000},
        *close_notices,
        {"waitFor": f"(({CANVAS_RANGE}) || {{}}).max > (({CANVAS_RANGE}) || {{}}).min",
         "when": OPENED, "timeoutMs": 90000},
        {"waitFor": f"({THUMBNAILS}).some(t => t.complete && t.width > 0)", "when": OPENED,
         "timeoutMs": 30000},
        {"wheel": {"selector": VIEWPORT, "deltaY": 100, "times": middle - 1, "pauseMs": 300},
         "when": OPENED},
        {"waitFor": f"document.body.innerText.includes('({middle}/{frames})')", "when": OPENED,
         "timeoutMs": 60000},
        {"sleep": 1500},
        *close_notices,  # a tour step or notice that came up meanwhile
        {"sleep": 500},
        # What the test reads back, last (see LOOKS).
        {"evaluate": CANVAS_RANGE, "when": OPENED},
        {"evaluate": THUMBNAILS},
        {"evaluate": ERROR_TOASTS},
        {"evaluate": "document.body.innerText"},
    ]


#: The last four steps' values, by name.
LOOKS = ("canvas", "thumbnails", "error_toasts", "page_text")


def screenshot_path(tmp_path: Path) -> tuple[Path, list[str]]:
    """Where the screenshot goes, and the study flags: the demo's own study for the README."""
    wanted = os.environ.get("FRAMECDN_DEMO_SCREENSHOT")
    if wanted:
        return (REPO / wanted).resolve(), []
    return tmp_path / "ohif-demo.png", SMALL


def frames_of(study_flags: list[str]) -> int:
    return int(study_flags[study_flags.index("--frames") + 1]) if study_flags else 60


def test_the_demo_opens_in_ohif(
    browser_toolchain: Toolchain, ohif_dist: Path, tmp_path: Path
) -> None:
    screenshot, study_flags = screenshot_path(tmp_path)
    data_dir = tmp_path / "demo"
    port, viewer_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "framecdn", "demo", "--data-dir", str(data_dir), *study_flags,
        "--port", str(port), "--viewer", "--viewer-port", str(viewer_port),
        "--viewer-cache", str(BUILD_DIR),  # the OHIF the browser fixtures fetched
    ]
    with running(command, marker=f"-dir={data_dir}", stderr=subprocess.STDOUT,
                 preexec_fn=ignore_sigint) as process:
        output = "".join(read_until(process, "Ctrl-C stops", timeout=600))
        found = re.search(r"viewer\s+(http://127\.0\.0\.1:\d+/viewer\?StudyInstanceUIDs=\S+)",
                          output)
        assert found, output
        url = found[1]
        script = steps(frames_of(study_flags))
        run = browser_toolchain.run(
            url, [*script, {"screenshot": {"path": str(screenshot)}}], timeout=180,
            user_data_dir=tmp_path / "profile", viewport={"width": 1440, "height": 900},
            init_script=OHIF_TOUR_SEEN,
        )
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert wait_gone(f"-dir={data_dir}") == []

    run.raise_for_error()
    framecdn = f"http://127.0.0.1:{port}"
    # OHIF prefetches the whole stack: with the full-size study some frames are still on
    # their way when the browser closes (no status, no error yet). Everything answered is 2xx.
    exchanges = [x for x in run.to(framecdn) if x.status is not None or x.error is not None]
    failed = [str(x) for x in exchanges if not x.ok]
    assert not failed, "framecdn requests not answered 2xx:\n" + "\n".join(failed)
    assert any("/frames/" in x.url for x in exchanges), run.transcript()
    thumbnails = [x for x in exchanges if x.url.split("?")[0].endswith("/thumbnail")]
    assert thumbnails and all(x.response_header("content-type") == "image/jpeg"
                              for x in thumbnails), run.transcript()
    looks = {name: run.step_value(len(script) - len(LOOKS) + i) for i, name in enumerate(LOOKS)}
    assert any(t["complete"] and t["width"] > 0 for t in looks["thumbnails"])
    assert looks["error_toasts"] == 0, looks["page_text"]
    canvas = looks["canvas"]
    assert canvas["max"] > canvas["min"], f"viewport blank: {canvas}"
    assert not run.console_errors, "\n".join(run.console_errors)
    assert screenshot.stat().st_size > 10_000
