"""Rendered frames and thumbnails over real HTTP, from a real bucket, checked against pydicom.

Each rendered PNG must equal, pixel for pixel, pydicom's decoding of the source file put
through the PS3.3 pipeline as this file computes it on its own (Rescale Slope/Intercept, the
VOI window spelled out from C.11.2.1.2, inversion for MONOCHROME1); a JPEG must be close to
it. Then: the ``window`` and ``viewport`` parameters, thumbnails' size, a rendition computed
once (a second origin reads it from the bucket), 304s, 404/406/400 answers, and the event loop
answering /healthz while a big JPEG 2000 frame is being decoded.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import CACHE
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance.eviction import evict
from framecdn.maintenance.stats import collect
from framecdn.synthetic import write_tomosynthesis
from tests.auth_fixtures import Clinics, auth_settings, identity_provider, two_clinics
from tests.conftest import list_keys
from tests.nginx_fixtures import nginx_binary_or_none, run_nginx
from tests.origin_fixtures import Expected, RunningOrigin, ingest, run_origin
from tests.upstream_fixtures import metric, populated_orthanc, upstream_settings

PNG = {"Accept": "image/png"}


# --- the pipeline, written out from PS3.3 C.11.2.1.2 (independent of framecdn's) -------------


@dataclass(frozen=True)
class VOI:
    center: float
    width: float
    function: str  # LINEAR, LINEAR_EXACT, SIGMOID


def voi(x: np.ndarray, window: VOI) -> np.ndarray:
    """Output range 0..255; rounded to the nearest integer (ties to even)."""
    c, w, y_min, y_max = window.center, window.width, 0.0, 255.0
    if window.function == "SIGMOID":
        y = (y_max - y_min) / (1 + np.exp(-4 * (x - c) / w)) + y_min
    elif window.function == "LINEAR_EXACT":
        y = np.empty_like(x)
        below, above = x <= c - w / 2, x > c + w / 2
        middle = ~(below | above)
        y[below], y[above] = y_min, y_max
        y[middle] = ((x[middle] - c) / w + 0.5) * (y_max - y_min) + y_min
    else:
        y = np.empty_like(x)
        below, above = x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2
        middle = ~(below | above)
        y[below], y[above] = y_min, y_max
        y[middle] = ((x[middle] - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def first(value: object) -> float:
    if isinstance(value, list | pydicom.multival.MultiValue):
        return float(value[0])
    return float(value)


def frame_attributes(ds: Dataset, number: int) -> tuple[VOI | None, float, float]:
    """The frame's window and rescale: per-frame group, shared group, then top level."""
    places: list[Dataset] = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        places.append(ds.PerFrameFunctionalGroupsSequence[number - 1])
    if "SharedFunctionalGroupsSequence" in ds:
        places.append(ds.SharedFunctionalGroupsSequence[0])
    window = rescale = None
    for place in places:
        if window is None and "FrameVOILUTSequence" in place:
            item = place.FrameVOILUTSequence[0]
            window = VOI(first(item.WindowCenter), first(item.WindowWidth),
                         item.get("VOILUTFunction", "LINEAR"))
        if rescale is None and "PixelValueTransformationSequence" in place:
            item = place.PixelValueTransformationSequence[0]
            rescale = (float(item.RescaleSlope), float(item.RescaleIntercept))
    if window is None and "WindowCenter" in ds:
        window = VOI(first(ds.WindowCenter), first(ds.WindowWidth),
                     ds.get("VOILUTFunction", "LINEAR"))
    if rescale is None:
        rescale = (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0)))
    return window, *rescale


def expected_image(path: Path, number: int = 1, window: VOI | None = None) -> np.ndarray:
    """pydicom's decoding of frame ``number``, rendered the way PS3.3 says (8 bits)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[number - 1]
    if ds.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2"):
        if ds.PhotometricInterpretation == "PALETTE COLOR":
            pixels = pydicom.pixels.apply_color_lut(pixels, ds)
            return (pixels >> 8).astype(np.uint8) if pixels.dtype.itemsize > 1 else pixels
        return pixels.astype(np.uint8)
    stored_window, slope, intercept = frame_attributes(ds, number)
    x = pixels.astype(np.float64) * slope + intercept
    window = window or stored_window
    if window is None:  # the frame's own value range
        low, high = x.min(), x.max()
        window = VOI((low + high) / 2, high - low, "LINEAR_EXACT")
    image = voi(x, window)
    return 255 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


def decoded(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


# --- fixtures ---------------------------------------------------------------------------------


def with_new_uids(source: str | Path, target: Path, change: object = None) -> Path:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if callable(change):
        change(ds)
    ds.save_as(target, enforce_file_format=True)
    return target


def per_frame_window(ds: Dataset) -> None:
    """eCT_Supplemental with a window of frame 2's own (frame 1 keeps the shared one)."""
    item = Dataset()
    item.WindowCenter, item.WindowWidth = 300, 800
    ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = [item]


FILES = {
    "ct_rescale": "CT_small.dcm",
    "mr_window": "MR_small.dcm",
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg_2000": "emri_small_jpeg_2k_lossless.dcm",
    "rle": "emri_small_RLE.dcm",
    "monochrome1": "RG3_UNCR.dcm",
    "palette": "OBXXXX1A.dcm",
    "functional_groups": "eCT_Supplemental.dcm",
}


@pytest.fixture(scope="module")
def instances(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Expected]:
    folder = tmp_path_factory.mktemp("render-data")
    tomo = folder / "tomo.dcm"
    write_tomosynthesis(tomo, frames=4, rows=320, columns=256, seed=9)
    found = {"native_16bit": ingest(tomo, module_settings)}
    for name, file in FILES.items():
        change = per_frame_window if name == "functional_groups" else None
        copy = with_new_uids(get_testdata_file(file), folder / f"{name}.dcm", change)
        found[name] = ingest(copy, module_settings)
    return found


@pytest.fixture(scope="module")
def origin(module_settings: Settings) -> RunningOrigin:
    with run_origin(module_settings) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with httpx.Client(timeout=60) as client:
        yield client


def rendered_url(origin: RunningOrigin, inst: Expected, frame: int | None = None) -> str:
    base = origin.instance_url(inst)
    return f"{base}/frames/{frame}/rendered" if frame else f"{base}/rendered"


def renditions(origin: RunningOrigin, source: str) -> float:
    return origin.origin.metrics.renditions.labels(source)._value.get()


# --- pixels -----------------------------------------------------------------------------------

CASES = [  # (instance, frame)
    ("native_16bit", 3), ("ct_rescale", 1), ("mr_window", 1), ("jpeg_baseline", 1),
    ("jpeg_ls", 1), ("jpeg_2000", 2), ("rle", 2), ("monochrome1", 1), ("palette", 1),
    ("functional_groups", 1), ("functional_groups", 2),
]


@pytest.mark.parametrize(("case", "frame"), CASES, ids=[f"{c}-{f}" for c, f in CASES])
def test_rendered_png_is_pydicoms_decoding_windowed(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected], case: str,
    frame: int,
) -> None:
    inst = instances[case]
    response = http.get(rendered_url(origin, inst, frame), headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    expected = expected_image(inst.path, frame)
    assert np.array_equal(decoded(response), expected)


@pytest.mark.parametrize("case", ["native_16bit", "jpeg_baseline", "monochrome1"])
def test_rendered_jpeg_is_close_to_it(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected], case: str
) -> None:
    inst = instances[case]
    response = http.get(rendered_url(origin, inst, 1), headers={"Accept": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"
    got, expected = decoded(response).astype(int), expected_image(inst.path, 1).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 3, "JPEG quality 90 stays within a few levels"


def test_single_frame_instance_renders_at_instance_level(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["mr_window"]
    whole = http.get(rendered_url(origin, inst), headers=PNG)
    assert whole.status_code == 200
    assert np.array_equal(decoded(whole), expected_image(inst.path))


@pytest.mark.parametrize(
    ("window", "voi_window"),
    [
        ("40,400", VOI(40, 400, "LINEAR")),
        ("40.0,400,linear", VOI(40, 400, "LINEAR")),
        ("-100,300,linear-exact", VOI(-100, 300, "LINEAR_EXACT")),
        ("0,500,sigmoid", VOI(0, 500, "SIGMOID")),
    ],
)
def test_window_parameter(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected], window: str,
    voi_window: VOI,
) -> None:
    inst = instances["ct_rescale"]
    response = http.get(rendered_url(origin, inst, 1), params={"window": window}, headers=PNG)
    assert response.status_code == 200, response.text
    assert np.array_equal(decoded(response), expected_image(inst.path, 1, voi_window))


def test_viewport_scales_crops_and_flips(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native_16bit"]  # 320 rows x 256 columns
    url = rendered_url(origin, inst, 2)
    expected = expected_image(inst.path, 2)
    fitted = decoded(http.get(url, params={"viewport": "128,128"}, headers=PNG))
    assert fitted.shape == (128, 102)  # aspect ratio kept: 256 * 128/320 = 102.4
    bigger = decoded(http.get(url, params={"viewport": "640,1000"}, headers=PNG))
    assert bigger.shape == (800, 640)  # vw=640 binds: scale 2.5
    region = decoded(http.get(url, params={"viewport": "50,40,10,20,50,40"}, headers=PNG))
    assert np.array_equal(region, expected[20:60, 10:60])
    flipped = decoded(http.get(url, params={"viewport": "50,40,10,20,-50,-40"}, headers=PNG))
    assert np.array_equal(flipped, expected[20:60, 10:60][::-1, ::-1])
    to_edge = decoded(http.get(url, params={"viewport": "56,20,200,300,,"}, headers=PNG))
    assert np.array_equal(to_edge, expected[300:, 200:])


def test_thumbnails_are_bounded_and_show_the_middle_frame(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native_16bit"]
    instance_url = origin.instance_url(inst)
    study = f"{origin.root}/studies/{inst.study}"
    for url in (f"{instance_url}/thumbnail", f"{study}/series/{inst.series}/thumbnail",
                f"{study}/thumbnail"):
        response = http.get(url, params={"accept": "image/jpeg"})
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (205, 256)  # fits 256x256
    png = http.get(f"{instance_url}/thumbnail", headers=PNG)
    middle = np.asarray(Image.fromarray(expected_image(inst.path, 2)).resize(
        (205, 256), Image.Resampling.LANCZOS, reducing_gap=3.0))
    assert np.array_equal(decoded(png), middle)  # frame 2 of 4: the middle one
    small = http.get(f"{instance_url}/thumbnail", params={"viewport": "64,64"})
    assert Image.open(io.BytesIO(small.content)).size == (51, 64)
    frame = http.get(f"{instance_url}/frames/4/thumbnail", headers=PNG)
    assert decoded(frame).shape == (256, 205)
    too_big = http.get(f"{instance_url}/thumbnail", params={"viewport": "2048,2048"})
    assert too_big.status_code == 400


def test_a_rendition_is_computed_once_and_then_read_from_the_bucket(
    http: httpx.Client, module_settings: Settings, instances: dict[str, Expected],
    s3_client: object,
) -> None:
    inst = instances["jpeg_2000"]
    params = {"window": "500,1000", "quality": "80"}
    with run_origin(module_settings) as first:
        url = rendered_url(first, inst, 3)
        one = http.get(url, params=params)
        assert one.status_code == 200
        assert renditions(first, "rendered") == 1
        again = http.get(url, params={"quality": "80", "window": "500.0,1000,LINEAR"})
        assert again.content == one.content and renditions(first, "rendered") == 1
    generation = KeyLayout(module_settings.prefix).generation_prefix(
        inst.index.key, inst.index.generation
    )
    prefix = f"{generation}rendered/3/"  # next to the frames of the committed generation
    stored = list_keys(s3_client, module_settings.bucket, prefix)
    assert len(stored) == 1 and "jpeg-q80-w500_1000_linear-vfull-" in stored[0]
    with run_origin(module_settings) as second:
        other = http.get(rendered_url(second, inst, 3), params=params)
        assert other.content == one.content
        assert renditions(second, "bucket") == 1 and renditions(second, "rendered") == 0
        assert other.headers["etag"] == one.headers["etag"]
        revalidated = http.get(rendered_url(second, inst, 3), params=params,
                               headers={"If-None-Match": one.headers["etag"]})
        assert revalidated.status_code == 304
        assert renditions(second, "bucket") == 1  # a 304 reads nothing


def test_caching_headers_like_frames(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["rle"]
    response = http.get(rendered_url(origin, inst, 1))
    assert response.headers["cache-control"] == origin.settings.frame_cache_control
    assert response.headers["vary"] == "Accept"
    head = http.head(rendered_url(origin, inst, 1))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


# --- refusals ---------------------------------------------------------------------------------


def test_missing_instance_or_frame_answers_like_frames(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["mr_window"]
    gone = f"{origin.root}/studies/{inst.study}/series/{inst.series}/instances/1.2.3.4"
    frames = http.get(f"{gone}/frames/1", headers={"Accept": "application/octet-stream"})
    for url in (f"{gone}/frames/1/rendered", f"{gone}/rendered", f"{gone}/thumbnail"):
        response = http.get(url)
        assert (response.status_code, response.json()) == (404, frames.json())
    for url in (f"{origin.root}/studies/1.2.3/series/4.5.6/thumbnail",
                f"{origin.root}/studies/1.2.3/thumbnail"):
        assert http.get(url).status_code == 404
    beyond = http.get(rendered_url(origin, inst, 2))
    assert beyond.status_code == 400 and "beyond NumberOfFrames" in beyond.json()["error"]


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        ("application/dicom", {}),
        ("image/gif", {}),
        ("multipart/related; type=application/octet-stream", {}),
        (None, {"accept": "image/webp"}),
        ("image/jpeg;q=0, image/png;q=0", {}),
    ],
)
def test_unacceptable_media_types_are_406(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected], accept: str | None,
    query: dict[str, str],
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = http.get(rendered_url(origin, instances["ct_rescale"], 1), params=query,
                        headers=headers)
    assert response.status_code == 406
    assert response.json()["available"] == ["image/jpeg", "image/png"]


def test_accept_picks_the_media_type(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    url = rendered_url(origin, instances["ct_rescale"], 1)
    for accept, media in [("*/*", "image/jpeg"), ("image/*", "image/jpeg"),
                          ("image/png, image/jpeg;q=0.5", "image/png"),
                          ("image/webp, image/png;q=0.9, */*;q=0.1", "image/png")]:
        assert http.get(url, headers={"Accept": accept}).headers["content-type"] == media
    by_query = http.get(url, params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert by_query.headers["content-type"] == "image/png"


def test_several_frames_are_406_with_a_way_forward(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native_16bit"]
    refusals = []
    for url in (rendered_url(origin, inst), f"{origin.instance_url(inst)}/frames/1,2/rendered"):
        # The same refusal whatever is asked: image/gif must not be told "only JPEG and PNG".
        for accept in (None, "image/gif", "video/mp4", "image/jpeg", "*/*"):
            response = http.get(url, headers={"Accept": accept} if accept else {})
            assert response.status_code == 406, (url, accept)
            body = response.json()
            assert "frames/{n}/rendered" in body["error"], (url, accept)
            assert body["available"] == [], (url, accept)
            refusals.append(body["error"])
    assert len(set(refusals)) == 2  # one wording per resource, whatever the Accept


@pytest.mark.parametrize(
    "query",
    [
        {"window": "40"}, {"window": "a,b"}, {"window": "40,0"}, {"window": "40,400,cubic"},
        {"window": "nan,400"}, {"viewport": "0,10"}, {"viewport": "10"},
        {"viewport": "99999,10"}, {"viewport": "10,10,1,2,3"}, {"viewport": "10,10,1,1,0,5"},
        {"viewport": "10,10,900,900,10,10"}, {"quality": "0"}, {"quality": "high"},
        {"annotation": "patient"},
    ],
)
def test_bad_parameters_are_400(
    http: httpx.Client, origin: RunningOrigin, instances: dict[str, Expected],
    query: dict[str, str],
) -> None:
    response = http.get(rendered_url(origin, instances["ct_rescale"], 1), params=query)
    assert response.status_code == 400, response.text
    assert "\n" not in response.json()["error"]


# --- off the event loop ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg_2000(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
                  ) -> Expected:
    """One 2457x1890 16-bit frame as JPEG 2000: about a second to decode."""
    folder = tmp_path_factory.mktemp("big-j2k")
    native = folder / "native.dcm"
    write_tomosynthesis(native, frames=1, rows=2457, columns=1890, seed=4)
    ds = pydicom.dcmread(native)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(folder / "j2k.dcm", enforce_file_format=True)
    return ingest(folder / "j2k.dcm", module_settings)


def test_the_event_loop_answers_while_a_big_frame_renders(
    http: httpx.Client, origin: RunningOrigin, big_jpeg_2000: Expected
) -> None:
    url = rendered_url(origin, big_jpeg_2000, 1)
    done = threading.Event()
    result: dict[str, httpx.Response] = {}

    def render() -> None:
        with httpx.Client(timeout=120) as own:
            result["r"] = own.get(url, params={"quality": "70"})
        done.set()

    worker = threading.Thread(target=render)
    started = time.monotonic()
    worker.start()
    latencies = []
    while not done.is_set():
        sent = time.monotonic()
        assert http.get(f"{origin.base}/healthz").status_code == 200
        latencies.append(time.monotonic() - sent)
        time.sleep(0.02)
    worker.join()
    took = time.monotonic() - started
    assert result["r"].status_code == 200
    assert took > 0.5, "the rendering is long enough to tell a stalled loop"
    assert len(latencies) >= 5
    assert max(latencies) < 0.25, f"healthz waited {max(latencies):.2f} s while rendering"


def test_an_undecodable_frame_is_a_clear_error(
    http: httpx.Client, module_settings: Settings, tmp_path: Path
) -> None:
    """A JPEG 2000 codestream cut short still has the size the index says: 422, one line."""
    source = pydicom.dcmread(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    frames = [frame[: len(frame) // 3] for frame in
              pydicom.encaps.generate_frames(source.PixelData, number_of_frames=10)]
    source.PixelData = encapsulate(frames)
    bad = tmp_path / "bad.dcm"
    source.StudyInstanceUID = generate_uid()
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source.save_as(bad, enforce_file_format=True)
    inst = ingest(bad, module_settings)
    with run_origin(module_settings) as running:
        response = http.get(rendered_url(running, inst, 1))
    assert response.status_code == 422
    assert response.json()["error"].startswith("frame cannot be decoded")


# --- the bucket's rules and access control ----------------------------------------------------


def test_renditions_are_tagged_for_expiry_and_evicted_with_their_instance(
    http: httpx.Client, settings: Settings, s3_client: object, tmp_path: Path
) -> None:
    write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=64, columns=48, seed=2)
    inst = ingest(tmp_path / "t.dcm", settings)
    with run_origin(settings) as running:
        assert http.get(rendered_url(running, inst, 1)).status_code == 200
        assert http.get(f"{running.instance_url(inst)}/thumbnail").status_code == 200
    bucket = Bucket(s3_client, settings.bucket)
    layout = KeyLayout(settings.prefix)
    keys = list_keys(s3_client, settings.bucket, layout.instance_prefix(inst.index.key))
    rendered = [key for key in keys if "/rendered/" in key]
    assert len(rendered) == 2
    assert all(bucket.retention(key) == CACHE for key in rendered)
    (stats,) = collect(bucket, layout)
    # 2 frames, metadata, part10, index, 2 renderings
    assert stats.objects == 2 + 1 + 1 + 1 + 2 and stats.incomplete_instances == 0
    report = evict(bucket, layout, study=inst.study)
    assert report.objects == 7
    assert list_keys(s3_client, settings.bucket, layout.study_prefix(inst.study)) == []


@pytest.fixture(scope="module")
def clinics(s3_store: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Clinics:
    base = s3_store.settings(prefix=f"render-auth-{uuid.uuid4().hex[:10]}")
    return two_clinics(base, tmp_path_factory.mktemp("clinics"))


def test_out_of_scope_answers_exactly_like_missing_and_answers_are_private(
    http: httpx.Client, clinics: Clinics
) -> None:
    with identity_provider() as provider, run_origin(auth_settings(clinics, provider)) as running:
        token = {"Authorization": f"Bearer {provider.token(site='a', studies=[clinics.a1.study])}"}
        mine = http.get(rendered_url(running, clinics.a1, 1), headers=token)
        assert mine.status_code == 200
        assert mine.headers["cache-control"].startswith("private")
        assert http.get(rendered_url(running, clinics.a1, 1)).status_code == 401
        a2, b1 = clinics.a2, clinics.b1
        for other in (a2, b1):  # another study of my site; a study of another site
            missing = other.study[:-1] + ("2" if other.study[-1] == "1" else "1")
            study, gone = f"{running.root}/studies/", f"{running.root}/studies/{missing}"
            instance = f"/series/{other.series}/instances/{other.sop}"
            for tail in (f"{instance}/frames/1/rendered", f"{instance}/thumbnail",
                         f"/series/{other.series}/thumbnail", "/thumbnail"):
                seen = http.get(f"{study}{other.study}{tail}", headers=token)
                absent = http.get(f"{gone}{tail}", headers=token)
                assert seen.status_code == 404
                assert (seen.status_code, seen.content) == (absent.status_code, absent.content)
        assert renditions(running, "rendered") == 1  # nothing out of scope was rendered


def test_without_the_render_extra_the_answer_names_it(
    s3_store: EmbeddedS3, module_settings: Settings, instances: dict[str, Expected]
) -> None:
    """An origin installed without the extra (numpy blocked here) answers 501, one line."""
    inst = instances["ct_rescale"]
    path = (f"/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
            "/frames/1/rendered?quality=37")  # a rendition no other test stored
    code = f"""
import sys; sys.modules["numpy"] = None  # `import numpy` now fails
import httpx
from framecdn.framestore.config import Settings
from tests.origin_fixtures import run_origin
with run_origin(Settings.from_env()) as running:
    answer = httpx.get(running.root + {path!r}, timeout=30)
print(answer.status_code, answer.json()["error"])
"""
    env = {**os.environ, **s3_store.environment(prefix=module_settings.prefix)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "501 rendering needs the render extra: pip install 'framecdn[render]'"
    )


def test_behind_the_shipped_nginx_in_accel_mode_renditions_are_cached(
    http: httpx.Client, module_settings: Settings, instances: dict[str, Expected], tmp_path: Path
) -> None:
    """accel delivers frames through nginx's object cache; renditions come from the origin
    and nginx keeps them like any answer (per URL and Accept)."""
    binary = nginx_binary_or_none()
    if binary is None:
        pytest.skip("nginx not installed")
    settings = module_settings.with_overrides(delivery="accel")
    inst = instances["mr_window"]
    with run_origin(settings) as running, run_nginx(binary, tmp_path, running.base,
                                                      settings) as nginx:
        url = f"{nginx.instance_url(inst)}/frames/1/rendered"
        first_answer = http.get(url, headers=PNG)
        assert first_answer.status_code == 200, first_answer.text
        assert np.array_equal(decoded(first_answer), expected_image(inst.path))
        again = http.get(url, headers=PNG)
        assert again.headers["x-cache-status"] == "HIT" and again.content == first_answer.content
        answered = running.origin.metrics.requests.labels("rendered", "-", "200")._value.get()
        assert answered == 1, "the second answer came from nginx's cache"
        as_jpeg = http.get(url, headers={"Accept": "image/jpeg"})
        assert as_jpeg.headers["content-type"] == "image/jpeg"  # Accept is in the cache key
        thumbnail = http.get(f"{nginx.instance_url(inst)}/thumbnail")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


def test_a_replaced_instance_is_rendered_from_its_new_generation(
    http: httpx.Client, settings: Settings, s3_client: object, tmp_path: Path
) -> None:
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "sop_uid": generate_uid()}
    write_tomosynthesis(tmp_path / "old.dcm", frames=2, rows=64, columns=48, seed=1, **uids)
    write_tomosynthesis(tmp_path / "new.dcm", frames=2, rows=64, columns=48, seed=2, **uids)
    old = ingest(tmp_path / "old.dcm", settings)
    with run_origin(settings.with_overrides(index_cache_seconds=0)) as running:
        url = rendered_url(running, old, 1)
        before = http.get(url, headers=PNG)
        assert np.array_equal(decoded(before), expected_image(old.path, 1))
        new = Expected(tmp_path / "new.dcm", ingest_file(tmp_path / "new.dcm", settings,
                                                        force=True), [])
        assert new.index.generation != old.index.generation
        after = http.get(url, headers=PNG)
        assert np.array_equal(decoded(after), expected_image(new.path, 1))
        assert after.headers["etag"] != before.headers["etag"]
    layout = KeyLayout(settings.prefix)
    fresh = layout.generation_prefix(new.index.key, new.index.generation)
    assert [key for key in list_keys(s3_client, settings.bucket, fresh) if "/rendered/" in key]


def test_an_instance_the_bucket_lacks_is_rendered_by_the_upstream(
    http: httpx.Client, settings: Settings, tmp_path: Path
) -> None:
    """With an upstream PACS (Orthanc), a rendered frame or thumbnail of an instance the
    bucket does not hold is the upstream's answer, as frames are; nothing renders here."""
    (tmp_path / "files").mkdir()
    with populated_orthanc(tmp_path / "files", tmp_path / "orthanc") as upstream:
        instance = upstream.instances[0]
        with run_origin(upstream_settings(settings, upstream.orthanc)) as running:
            base = f"{running.root}{instance.path_below_root}"
            answer = http.get(f"{base}/frames/1/rendered", headers={"Accept": "image/jpeg"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("image/jpeg")
            assert answer.content[:3] == b"\xff\xd8\xff"
            assert metric(running, "framecdn_upstream_requests", route="rendered",
                          status="200") == 1
            assert renditions(running, "rendered") == 0
