"""OHIF 3.13 (the built ``@ohif/app``) in Chromium opens framecdn's studies.

OHIF's own ``app-config.js`` gets one DICOMweb data source pointing at framecdn (QIDO, WADO-RS
and WADO-URI roots; thumbnails from frames; all other settings OHIF's defaults) and is served
from its own port, so every framecdn request is cross-origin. The browser opens
``/viewer?StudyInstanceUIDs=S``; the test checks, from the browser's own network events and
the page: every request to framecdn answered 2xx (preflights included), the displayed
instance's frames fetched from framecdn, each exactly once while the mouse wheel scrolls the
viewport to the last frame, no console error and no OHIF error notification, and the viewport
canvas shows an image (its pixels are not uniform). A screenshot is saved for each case, into
``FRAMECDN_SCREENSHOT_DIR`` when set (named after the test, e.g.
``ohif_opens_and_scrolls_the_tomosynthesis_instance-tomosynthesis-stream.png``).

With OHIF's default config (``omitQuotationForMultipartRequest: true``) its frame and metadata
requests are CORS-simple, so no preflight is sent yet; a bearer token (once access control
exists) will add them. The Cornerstone tests send the quoted Accept and check preflights.

OHIF opens a study with QIDO-RS searches before any metadata: ``GET
{root}/studies?...&StudyInstanceUID=S`` (twice), ``{root}/studies/S/series?...``, and the
patient's other studies (``{root}/studies?00100020=<PatientID>...``). With no upstream
configured, the origin answers them from the bucket (``framecdn.origin.qido_bucket``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from framecdn.viewer import study_url
from tests.browser_fixtures import (
    OHIF_TOUR_SEEN,
    BrowserRun,
    BrowserUnavailable,
    Toolchain,
    copy_with_new_uids,
    ohif_app_config,
    serve_directory,
    serve_framecdn,
    unavailable,
)
from tests.origin_fixtures import Expected, ingest
from tests.upstream_fixtures import orthanc_or_skip, running_fill, upstream_settings

pytest_plugins = ["tests.browser_plugin"]

TOMOSYNTHESIS_FRAMES = 12
TEST_FILES = {
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg_2000": "emri_small_jpeg_2k_lossless.dcm",
    "rle": "emri_small_RLE.dcm",
}

VIEWPORT = ".cornerstone-canvas"
OPENED = f"document.querySelector('{VIEWPORT}') !== null"
NOT_OPENED = f"document.querySelector('{VIEWPORT}') === null"
CANVAS_RANGE = f"""(() => {{
  const canvas = document.querySelector('{VIEWPORT}');
  const context = canvas.getContext('2d');
  if (!context) return null;
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let min = 255, max = 0;
  for (let i = 0; i < data.length; i += 4) {{
    const v = data[i] + data[i + 1] + data[i + 2];
    if (v < min) min = v;
    if (v > max) max = v;
  }}
  return {{min, max, width: canvas.width, height: canvas.height}};
}})()"""
ERROR_TOASTS = "document.querySelectorAll('[data-sonner-toast][data-type=\"error\"]').length"


@pytest.fixture(scope="module")
def module_settings(s3_store: EmbeddedS3) -> Settings:
    return s3_store.settings(prefix=f"ohif-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def studies(
    module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Expected]:
    """One study per case, each with one instance."""
    folder = tmp_path_factory.mktemp("ohif-data")
    tomo = folder / "tomo.dcm"
    write_tomosynthesis(tomo, frames=TOMOSYNTHESIS_FRAMES, rows=512, columns=400, seed=5)
    found = {"tomosynthesis": ingest(tomo, module_settings)}
    for name, file in TEST_FILES.items():
        found[name] = ingest(copy_with_new_uids(get_testdata_file(file), folder / f"{name}.dcm"),
                             module_settings)
    return found


@pytest.fixture
def screenshot_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FRAMECDN_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name.removeprefix("test_")).strip("-")
    return folder / f"{name}.png"


@dataclass
class ViewerRun:
    browser: BrowserRun
    framecdn: str
    instance: Expected
    screenshot: Path

    def value(self, name: str) -> object:
        return self.browser.step_value(STEP_INDEX[name], default=None)


STEPS: list[tuple[str | None, dict]] = [
    # Open: the viewport appears, or OHIF says the study is not available.
    (None, {"waitFor": f"{OPENED} || document.body.innerText.includes('not available')",
            "timeoutMs": 60000}),
    # OHIF's first-visit tour and its investigational-use banner cover the viewport.
    (None, {"click": {"text": "Skip all", "optional": True}, "when": OPENED, "timeoutMs": 5000}),
    (None, {"click": {"text": "Confirm and hide", "optional": True}, "when": OPENED,
            "timeoutMs": 5000}),
    # The first image is drawn: the viewport's pixels are no longer all alike.
    (None, {"waitFor": f"(({CANVAS_RANGE}) || {{}}).max > (({CANVAS_RANGE}) || {{}}).min",
            "when": OPENED, "timeoutMs": 60000}),
    ("before_scroll", {"evaluate": "performance.now()"}),
    (None, {"wheel": {"selector": VIEWPORT, "deltaY": 100, "times": TOMOSYNTHESIS_FRAMES + 3,
                      "pauseMs": 250}, "when": OPENED}),
    (None, {"sleep": 1500}),
    ("overlay", {"evaluate": "document.body.innerText", "when": OPENED}),
    ("canvas", {"evaluate": CANVAS_RANGE, "when": OPENED}),
    ("error_toasts", {"evaluate": ERROR_TOASTS}),
    ("page_text", {"evaluate": "document.body.innerText"}),
]
STEP_INDEX = {name: i for i, (name, _) in enumerate(STEPS) if name}


#: The DICOMweb root infra/ohif/app-config.js names (nginx's, in compose.yaml).
COMPOSE_ROOT = "http://localhost:8080/dicom-web"
REPO = Path(__file__).resolve().parent.parent


#: The login block of infra/ohif/app-config.js (OHIF signs in at the stack's Keycloak, which
#: does not run here; tests/test_compose.py checks the block against the realm).
COMPOSE_LOGIN = re.compile(r"^  oidc: \[\n.*?^  \],\n", re.M | re.S)


def compose_app_config(dist: Path, root: str) -> bytes:
    """The app-config.js compose.yaml serves, its DICOMweb root pointed at ``root``, without
    its login block (this test's origin runs without access control)."""
    text = (REPO / "infra" / "ohif" / "app-config.js").read_text()
    assert text.count(COMPOSE_ROOT) == 3, "qidoRoot, wadoRoot and wadoUriRoot"
    text, logins = COMPOSE_LOGIN.subn("", text)
    assert logins == 1, "the oidc block"
    return text.replace(COMPOSE_ROOT, root).encode()


def open_in_ohif(
    toolchain: Toolchain, dist: Path, settings: Settings, mode: str, instance: Expected,
    work: Path, screenshot: Path,
    app_config: Callable[[Path, str], bytes] = ohif_app_config, token: str | None = None,
) -> ViewerRun:
    """Serve OHIF and framecdn, open the instance's study (with ``token``: OHIF sends it as
    a bearer token), scroll, look, take a screenshot."""
    overrides: dict[str, bytes] = {}
    with contextlib.ExitStack() as stack:
        viewer = stack.enter_context(serve_directory(dist, spa=True, overrides=overrides))
        try:
            framecdn = stack.enter_context(serve_framecdn(mode, settings, viewer, work))
        except BrowserUnavailable as exc:
            unavailable(str(exc))
        overrides["/app-config.js"] = app_config(dist, framecdn.root)
        steps = [step for _, step in STEPS] + [{"screenshot": {"path": str(screenshot)}}]
        run = toolchain.run(study_url(viewer, instance.study, token), steps, timeout=90,
                            user_data_dir=work / "profile", init_script=OHIF_TOUR_SEEN)
    return ViewerRun(run, framecdn.root, instance, screenshot)


@pytest.fixture
def viewer(
    request: pytest.FixtureRequest,
    browser_toolchain: Toolchain,
    ohif_dist: Path,
    module_settings: Settings,
    studies: dict[str, Expected],
    screenshot_path: Path,
    tmp_path: Path,
) -> ViewerRun:
    case, mode = request.param
    return open_in_ohif(browser_toolchain, ohif_dist, module_settings, mode, studies[case],
                        tmp_path, screenshot_path)


def check_viewer(run: ViewerRun) -> None:
    """Everything the issue asks of an opened study, in the order a person would notice."""
    browser = run.browser
    browser.raise_for_error()
    exchanges = browser.to(run.framecdn)
    failed = [str(x) for x in exchanges if not x.ok]  # preflights included
    assert not failed, "framecdn requests not answered 2xx:\n" + "\n".join(failed)
    instance = run.instance
    frame_prefix = (f"{run.framecdn}/studies/{instance.study}/series/{instance.series}"
                    f"/instances/{instance.sop}/frames/")
    fetched = Counter(x.url.removeprefix(frame_prefix) for x in exchanges
                      if x.url.startswith(frame_prefix) and not x.is_preflight)
    expected = {str(n): 1 for n in range(1, len(instance.frames) + 1)}
    assert dict(fetched) == expected, "every frame of the displayed instance fetched once"
    total = len(instance.frames)
    if total > 1:
        overlay = str(run.value("overlay"))
        assert f"({total}/{total})" in overlay, f"the wheel scrolled to the last frame: {overlay!r}"
    assert not browser.console_errors, "\n".join(browser.console_errors)
    assert run.value("error_toasts") == 0, run.value("page_text")
    canvas = run.value("canvas")
    assert isinstance(canvas, dict) and canvas["max"] > canvas["min"], f"viewport blank: {canvas}"
    assert run.screenshot.stat().st_size > 0


@pytest.mark.parametrize(
    "viewer", [("tomosynthesis", mode) for mode in ("stream", "redirect", "accel")],
    ids=lambda p: f"tomosynthesis-{p[1]}", indirect=True,
)
def test_ohif_opens_and_scrolls_the_tomosynthesis_instance(viewer: ViewerRun) -> None:
    check_viewer(viewer)


@pytest.mark.parametrize(
    "viewer", [(case, "stream") for case in TEST_FILES], ids=lambda p: p[0], indirect=True
)
def test_ohif_displays_compressed_instances(viewer: ViewerRun) -> None:
    """Stream mode only: OHIF's multipart Accept takes the same path through nginx for every
    syntax (the tomosynthesis case covers accel), and the Cornerstone tests decode each
    compressed syntax in every mode. A browser run costs ~12 s on 2 cores."""
    check_viewer(viewer)


def test_ohif_opens_a_study_with_the_app_config_compose_serves(
    browser_toolchain: Toolchain, ohif_dist: Path, module_settings: Settings,
    studies: dict[str, Expected], screenshot_path: Path, tmp_path: Path,
) -> None:
    """infra/ohif/app-config.js, the viewer's configuration in compose.yaml, works as shipped
    (only its root, nginx's public URL there, is this test's framecdn)."""
    check_viewer(open_in_ohif(
        browser_toolchain, ohif_dist, module_settings, "stream", studies["tomosynthesis"],
        tmp_path, screenshot_path, app_config=compose_app_config,
    ))


def test_ohif_opens_a_study_the_bucket_lacks_through_the_upstream(
    browser_toolchain: Toolchain, ohif_dist: Path, s3_store: EmbeddedS3,
    studies: dict[str, Expected], screenshot_path: Path, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An empty bucket, Orthanc (with DICOMweb) as the upstream: OHIF, with framecdn as its
    only root, opens and scrolls the study (searches and metadata from Orthanc through the
    origin, rewritten; frames from Orthanc or, once filled, from the bucket)."""
    instance = studies["tomosynthesis"]
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as orthanc:
        orthanc.upload(instance.path)
        empty = s3_store.settings(prefix=f"ohif-upstream-{uuid.uuid4().hex[:10]}")
        upstream = upstream_settings(empty, orthanc)
        with running_fill(upstream) as fill:
            run = open_in_ohif(
                browser_toolchain, ohif_dist, upstream.with_overrides(fill_url=fill.url),
                "stream", instance, tmp_path, screenshot_path,
            )
            fill.wait_idle()
        check_viewer(run)
        assert not [x for x in run.browser.exchanges if f":{orthanc.http_port}" in x.url]
        assert fill.filler.status()["ingested"] == 1


def test_ohif_study_browser_shows_framecdn_thumbnails(
    browser_toolchain: Toolchain, ohif_dist: Path, module_settings: Settings,
    studies: dict[str, Expected], screenshot_path: Path, tmp_path: Path,
) -> None:
    """``thumbnailRendering: 'thumbnailDirect'``: the study browser's thumbnail is framecdn's
    ``.../thumbnail`` as a plain ``<img>`` URL (no frame is fetched for it)."""
    config = functools.partial(ohif_app_config, thumbnails="thumbnailDirect")
    run = open_in_ohif(browser_toolchain, ohif_dist, module_settings, "stream",
                       studies["tomosynthesis"], tmp_path, screenshot_path, app_config=config)
    check_viewer(run)
    thumbnails = [x for x in run.browser.to(run.framecdn)
                  if x.url.split("?")[0].endswith("/thumbnail")]
    assert thumbnails, run.browser.transcript()
    for thumbnail in thumbnails:
        assert thumbnail.ok and thumbnail.finished, str(thumbnail)
        assert thumbnail.response_header("content-type") == "image/jpeg"
        assert thumbnail.type == "Image"  # an <img>: it sends no Authorization header
