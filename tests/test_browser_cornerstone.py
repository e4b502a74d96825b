"""Cornerstone3D in Chromium decodes framecdn's frames to the pixels pydicom decodes.

A page built with vite from ``@cornerstonejs/core`` and ``@cornerstonejs/dicom-image-loader``
(tests/browser/cornerstone/) loads ``wadors:`` image ids from framecdn as OHIF does: series
metadata fetched from framecdn and registered with the loader's wadors metadata manager,
OHIF's Accept, the loader's own web workers and codecs. The test compares every decoded
frame with pydicom's ``pixel_array`` of the source file: equal for lossless syntaxes, within
JPEG's tolerance for baseline JPEG. The page is served from another port than framecdn, so
every request is cross-origin and the browser's own CORS checks (and preflights) apply.

Delivery modes: ``stream`` and ``redirect`` straight from the origin, ``accel`` behind the
shipped nginx config. With OHIF's multipart Accept every mode streams multipart (a redirect
target cannot be multipart); with a single-part Accept the redirect mode answers 307 to the
presigned S3 URL and the accel mode hands nginx an ``X-Accel-Redirect``, which the browser
follows or never sees.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.browser_fixtures import (
    BrowserRun,
    BrowserUnavailable,
    Toolchain,
    copy_with_new_uids,
    serve_directory,
    serve_framecdn,
    unavailable,
)
from tests.origin_fixtures import Expected, ingest

pytest_plugins = ["tests.browser_plugin"]

# OHIF's generateAcceptHeader without omitQuotationForMultipartRequest: the quotes make the
# request non-simple, so every frame request is preceded by a CORS preflight.
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
SINGLE_PART_ACCEPT = "application/octet-stream; transfer-syntax=*"

#: pydicom's bundled files (fresh UIDs per copy); name -> (file, lossy).
TEST_FILES = {
    "jpeg_baseline": ("SC_rgb_jpeg_dcmtk.dcm", True),  # YBR_FULL 8-bit colour, lossy
    "jpeg_baseline_422": ("SC_rgb_dcmtk_+eb+cy+np.dcm", True),  # YBR_FULL_422: subsampled
    "jpeg_ls": ("MR_small_jpeg_ls_lossless.dcm", False),  # signed 16-bit
    "jpeg_2000": ("emri_small_jpeg_2k_lossless.dcm", False),  # 10 frames, 12 of 16 bits
    "jpeg_2000_signed": ("JPEG2000.dcm", False),  # .91 but reversible: decoders agree
    "rle": ("emri_small_RLE.dcm", False),  # 10 frames
    "rle_rgb": ("SC_rgb_rle.dcm", False),
}

#: Baseline JPEG decoders may differ: ISO/IEC 10918-2 lets a compliant IDCT be off by one
#: per sample, and chroma upsampling and the YCbCr->RGB conversion (libjpeg-turbo in
#: Cornerstone's worker, libjpeg behind pylibjpeg here) round once more. Seen here: 4:4:4
#: identical, 4:2:2 max 2 (PSNR 55.5 dB). A wrong frame, a wrong colour conversion or a
#: byte shift is off by tens or more over most of the image.
JPEG_MAX_ABS_DIFF = 3
JPEG_MIN_PSNR_DB = 45.0


@dataclass
class Case:
    name: str
    instance: Expected
    pixels: np.ndarray  # frames first, as pydicom decodes them
    lossy: bool


def pydicom_pixels(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return pixels if frames > 1 else pixels[np.newaxis]


@pytest.fixture(scope="module")
def module_settings(s3_store: EmbeddedS3) -> Settings:
    return s3_store.settings(prefix=f"cornerstone-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def cases(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    folder = tmp_path_factory.mktemp("cornerstone-data")
    tomo = folder / "tomo.dcm"
    write_tomosynthesis(tomo, frames=3, rows=512, columns=400, seed=11)
    found = [Case("native_tomosynthesis", ingest(tomo, module_settings), pydicom_pixels(tomo),
                  lossy=False)]
    for name, (file, lossy) in TEST_FILES.items():
        path = copy_with_new_uids(get_testdata_file(file), folder / f"{name}.dcm")
        found.append(Case(name, ingest(path, module_settings), pydicom_pixels(path), lossy))
    return found


@dataclass
class DecodeRun:
    browser: BrowserRun
    framecdn: str  # the DICOMweb root the page used
    accept: str
    mode: str
    metrics: str  # the origin's /metrics after the run

    def frame_answers(self, mode: str, status: int) -> int:
        """How many frame requests the origin answered in ``mode`` with ``status``."""
        pattern = (rf'framecdn_requests_total{{[^}}]*mode="{mode}",route="frames",'
                   rf'status="{status}"[^}}]*}} ([0-9.]+)')
        return sum(int(float(v)) for v in re.findall(pattern, self.metrics))

    @property
    def images(self) -> list[dict]:
        return self.browser.step_value(1)["images"]


RUNS = [
    ("stream", OHIF_ACCEPT),
    ("redirect", OHIF_ACCEPT),
    ("accel", OHIF_ACCEPT),
    ("stream", SINGLE_PART_ACCEPT),
    ("redirect", SINGLE_PART_ACCEPT),
    ("accel", SINGLE_PART_ACCEPT),
]


def run_id(run: tuple[str, str]) -> str:
    return f"{run[0]}-{'multipart' if run[1] == OHIF_ACCEPT else 'single'}"


@pytest.fixture(scope="module", params=RUNS, ids=run_id)
def decoded(
    request: pytest.FixtureRequest,
    browser_toolchain: Toolchain,
    cornerstone_page: Path,
    cases: list[Case],
    module_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> DecodeRun:
    """One page load per (delivery mode, Accept) decoding every case's frames."""
    mode, accept = request.param
    work = tmp_path_factory.mktemp(f"cornerstone-{mode}")
    with contextlib.ExitStack() as stack:
        page = stack.enter_context(serve_directory(cornerstone_page))
        try:
            served = stack.enter_context(serve_framecdn(mode, module_settings, page, work))
        except BrowserUnavailable as exc:
            unavailable(str(exc))
        job = {
            "root": served.root,
            "accept": accept,
            "series": [{"study": c.instance.study, "series": c.instance.series} for c in cases],
        }
        url = f"{page}/index.html?job={quote(json.dumps(job))}"
        steps: list[dict[str, Any]] = [
            {"waitFor": "window.result !== undefined", "timeoutMs": 90000},
            {"evaluate": "window.result"},
        ]
        run = browser_toolchain.run(url, steps, timeout=120, user_data_dir=work / "profile")
        metrics = httpx.get(f"{served.origin}/metrics", timeout=10).text
    run.raise_for_error()
    result = run.step_value(1)
    assert result["ok"], f"the page failed: {result['error']}\n{run.transcript()}"
    return DecodeRun(run, served.root, accept, mode, metrics)


def browser_pixels(image: dict) -> np.ndarray:
    dtypes = {"Uint8Array": np.uint8, "Int8Array": np.int8, "Uint16Array": np.uint16,
              "Int16Array": np.int16, "Float32Array": np.float32, "Uint8ClampedArray": np.uint8}
    values = np.frombuffer(base64.b64decode(image["pixels"]), dtype=dtypes[image["type"]])
    shape = (image["rows"], image["columns"])
    return values.reshape(shape if image["samples"] == 1 else (*shape, image["samples"]))


def psnr(expected: np.ndarray, actual: np.ndarray, peak: float) -> float:
    mse = float(np.mean((expected.astype(np.float64) - actual.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.mark.parametrize("case_name", ["native_tomosynthesis", *TEST_FILES])
def test_cornerstone_decodes_the_frames_pydicom_decodes(
    decoded: DecodeRun, cases: list[Case], case_name: str
) -> None:
    case = next(c for c in cases if c.name == case_name)
    images = {im["frame"]: im for im in decoded.images if im["sop"] == case.instance.sop}
    assert sorted(images) == list(range(1, len(case.pixels) + 1)), "every frame decoded once"
    for number, expected in enumerate(case.pixels, start=1):
        image = images[number]
        assert image["transferSyntax"] == case.instance.syntax
        actual = browser_pixels(image)
        assert actual.shape == expected.shape, f"frame {number}"
        if not case.lossy:
            mismatched = int(np.count_nonzero(actual.astype(np.int64) != expected))
            assert mismatched == 0, f"frame {number}: {mismatched} samples differ from pydicom"
            continue
        diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
        peak = float(2 ** int(pydicom.dcmread(case.instance.path).BitsStored) - 1)
        assert int(diff.max()) <= JPEG_MAX_ABS_DIFF, f"frame {number}: max diff {diff.max()}"
        assert psnr(expected, actual, peak) >= JPEG_MIN_PSNR_DB, f"frame {number}"


def test_every_framecdn_request_is_answered_2xx_with_no_console_error(decoded: DecodeRun) -> None:
    """Preflights included; a redirect (redirect mode, single part) counts by its target."""
    run = decoded.browser
    exchanges = run.to(decoded.framecdn)
    assert exchanges, "the page talked to framecdn"
    frames = [x for x in exchanges if "/frames/" in x.url and not x.is_preflight]
    assert frames, "frames were fetched from framecdn"
    assert all(x.header("Accept") == decoded.accept for x in frames)
    for exchange in exchanges:
        redirected = decoded.mode == "redirect" and exchange.status == 307 and not exchange.error
        assert redirected or (exchange.status is not None and 200 <= exchange.status < 300), (
            f"{exchange}\n{run.transcript()}"
        )
        assert exchange.error is None, str(exchange)
    if decoded.accept == OHIF_ACCEPT:
        preflights = [x for x in exchanges if x.is_preflight]
        assert len(preflights) >= 1, "OHIF's quoted Accept is not CORS-safelisted: preflights"
    assert not run.console_errors, "\n".join(run.console_errors)


def test_the_delivery_mode_was_the_one_under_test(decoded: DecodeRun, cases: list[Case]) -> None:
    """Multipart always streams; single part is redirected (the browser follows the 307 to
    the presigned URL, cross-origin) or handed to nginx, per mode."""
    run = decoded.browser
    frame_count = sum(len(c.pixels) for c in cases)
    frames = [x for x in run.to(decoded.framecdn) if "/frames/" in x.url and not x.is_preflight]
    assert len(frames) == frame_count, "each frame fetched once"
    if decoded.accept == OHIF_ACCEPT:  # a multipart body can only come from the origin
        for frame in frames:
            content_type = frame.response_header("Content-Type") or ""
            assert frame.status == 200 and content_type.startswith("multipart/related"), frame
        return
    if decoded.mode == "stream":
        assert decoded.frame_answers("stream", 200) == frame_count
        return
    if decoded.mode == "redirect":
        assert all(x.status == 307 for x in frames)
        followed = {x.request_id: x for x in run.exchanges if x not in frames
                    and x.request_id in {f.request_id for f in frames}}
        assert len(followed) == frame_count
        for target in followed.values():
            assert "X-Amz-Signature=" in target.url and target.status == 200, str(target)
        assert decoded.frame_answers("redirect", 307) == frame_count
    else:
        assert decoded.frame_answers("accel", 200) == frame_count
