"""The origin over real HTTP (uvicorn) against the real embedded S3, with real clients.

Frames are compared byte for byte with what pydicom reads from the source files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, RunningOrigin, ingest, run_origin

EVLE = "1.2.840.10008.1.2.1"
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


def copy_with_new_uids(source: str, target: Path, study: str | None = None) -> Path:
    """pydicom's test files share UIDs: give each copy its own (pixel data untouched)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def module_settings(s3_store: EmbeddedS3) -> Settings:
    return s3_store.settings(prefix=f"origin-{uuid.uuid4().hex[:10]}", max_frames_per_request=12)


@pytest.fixture(scope="module")
def instances(
    module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Expected]:
    folder = tmp_path_factory.mktemp("origin-data")
    study, series = generate_uid(), generate_uid()
    found: dict[str, Expected] = {}
    for name, seed in (("native", 1), ("native2", 2)):
        write_tomosynthesis(
            folder / f"{name}.dcm",
            frames=5,
            rows=48,
            columns=40,
            seed=seed,
            study_uid=study,
            series_uid=series,
        )
        found[name] = ingest(folder / f"{name}.dcm", module_settings)
    write_tomosynthesis(folder / "other.dcm", frames=2, rows=8, columns=8, study_uid=study, seed=3)
    found["other_series"] = ingest(folder / "other.dcm", module_settings)
    for name, testfile in (
        ("jp2", "emri_small_jpeg_2k_lossless.dcm"),
        ("rle", "emri_small_RLE.dcm"),
        ("jls", "emri_small_jpeg_ls_lossless.dcm"),
        ("jp2_lossy", "JPEG2000.dcm"),
    ):
        path = copy_with_new_uids(get_testdata_file(testfile), folder / f"{name}.dcm")
        found[name] = ingest(path, module_settings)
    return found


@pytest.fixture(scope="module")
def served(module_settings: Settings, instances: dict[str, Expected]) -> Iterator[RunningOrigin]:
    with run_origin(module_settings, public_url=True) as running:
        yield running


@pytest.fixture(scope="module")
def http(served: RunningOrigin) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def dicomweb(served: RunningOrigin) -> DICOMwebClient:
    return DICOMwebClient(url=served.root)


def cornerstone_parse(content_type: str, body: bytes) -> tuple[str | None, bytes]:
    """Cornerstone's multipart handling: single part as is, else the first part only."""
    if "multipart" not in content_type:
        syntax = (
            content_type.split("transfer-syntax=")[1].split(";")[0]
            if "transfer-syntax=" in content_type
            else None
        )
        return syntax, body
    boundary = body[: body.index(b"\r\n")]
    header_end = body.index(b"\r\n\r\n")
    header = body[:header_end].decode()
    syntax = None
    at = header.find("Content-Type:")  # case-sensitive, as in Cornerstone
    if at >= 0:
        line = header[at:].split("\r\n", 1)[0]
        if "transfer-syntax=" in line:
            syntax = line.split("transfer-syntax=")[1].split(";")[0].strip()
    start = header_end + 4
    end = body.index(b"\r\n" + boundary, start)
    return syntax, body[start:end]


# dicomweb-client ----------------------------------------------------------------


def test_dicomweb_client_native_frames(
    dicomweb: DICOMwebClient, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    got = dicomweb.retrieve_instance_frames(inst.study, inst.series, inst.sop, frame_numbers=[2])
    assert got == [inst.frames[1]]
    got = dicomweb.retrieve_instance_frames(
        inst.study,
        inst.series,
        inst.sop,
        frame_numbers=[5, 1, 3],
        media_types=(("application/octet-stream", EVLE),),
    )
    assert got == [inst.frames[4], inst.frames[0], inst.frames[2]]


@pytest.mark.parametrize(
    ("name", "media"), [("jp2", "image/jp2"), ("rle", "image/dicom-rle"), ("jls", "image/jls")]
)
def test_dicomweb_client_compressed_frames(
    dicomweb: DICOMwebClient, instances: dict[str, Expected], name: str, media: str
) -> None:
    inst = instances[name]
    numbers = [10, 1, 4, 7]
    got = dicomweb.retrieve_instance_frames(
        inst.study, inst.series, inst.sop, frame_numbers=numbers, media_types=(media,)
    )
    assert got == [inst.frames[n - 1] for n in numbers]
    got = dicomweb.retrieve_instance_frames(inst.study, inst.series, inst.sop, frame_numbers=[3])
    assert got == [inst.frames[2]]


def test_dicomweb_client_all_frames_of_lossy_jp2(
    dicomweb: DICOMwebClient, instances: dict[str, Expected]
) -> None:
    inst = instances["jp2_lossy"]
    got = dicomweb.retrieve_instance_frames(
        inst.study,
        inst.series,
        inst.sop,
        frame_numbers=[1],
        media_types=(("image/jp2", "1.2.840.10008.1.2.4.91"),),
    )
    assert got == inst.frames


def test_dicomweb_client_instance_metadata(
    dicomweb: DICOMwebClient, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    for name in ("native", "jp2"):
        inst = instances[name]
        meta = dicomweb.retrieve_instance_metadata(inst.study, inst.series, inst.sop)
        assert meta["00080018"]["Value"] == [inst.sop]
        assert meta["00280008"]["Value"][0] in (len(inst.frames), str(len(inst.frames)))
        assert meta["00020010"]["Value"] == [inst.syntax]
        for tag in ("00280010", "00280011", "00280100", "00280004"):
            assert tag in meta
        uri = meta["7FE00010"]["BulkDataURI"]
        assert uri.startswith(served.root + "/studies/")
        # The BulkDataURI resolves to this origin and yields every frame.
        parts = dicomweb.retrieve_bulkdata(uri)
        assert parts == inst.frames


def test_bulkdata_uri_follows_the_host_header_without_public_url(
    module_settings: Settings, instances: dict[str, Expected]
) -> None:
    inst = instances["jp2"]
    with run_origin(module_settings.with_overrides(root_path="/wado/")) as plain:
        url = f"{plain.instance_url(inst)}/metadata"
        assert url.startswith(plain.base + "/wado/studies/")
        with httpx.Client(timeout=30) as client:
            meta = client.get(url).json()[0]
            uri = meta["7FE00010"]["BulkDataURI"]
            assert uri.startswith(f"{plain.base}/wado/studies/{inst.study}/")
            frames = client.get(uri.replace(",", "%2C"), headers={"Accept": "*/*"})
            assert frames.status_code == 200
            proxied = client.get(url, headers={"Host": "viewer.example:8443"}).json()[0]
            assert proxied["7FE00010"]["BulkDataURI"].startswith("http://viewer.example:8443/wado/")


def test_dicomweb_client_series_and_study_metadata(
    dicomweb: DICOMwebClient, instances: dict[str, Expected]
) -> None:
    a, b, c = instances["native"], instances["native2"], instances["other_series"]
    series = dicomweb.retrieve_series_metadata(a.study, a.series)
    assert sorted(m["00080018"]["Value"][0] for m in series) == sorted([a.sop, b.sop])
    study = dicomweb.retrieve_study_metadata(a.study)
    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted([a.sop, b.sop, c.sop])
    assert all(m["7FE00010"]["BulkDataURI"].startswith("http://") for m in study)


# Raw HTTP: what browsers and Cornerstone see -----------------------------------------


def test_ohif_default_accept_and_cornerstone_parser(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    response = http.get(served.frames_url(inst, "4"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/octet-stream"; boundary=')
    boundary = content_type.split("boundary=")[1]
    assert response.content.startswith(f"--{boundary}\r\n".encode())
    assert int(response.headers["content-length"]) == len(response.content)
    assert "content-encoding" not in response.headers
    syntax, frame = cornerstone_parse(content_type, response.content)
    assert (syntax, frame) == (EVLE, inst.frames[3])
    assert f"Content-Location: {served.frames_url(inst, '4')}\r\n".encode() in response.content


@pytest.mark.parametrize("name", ["jp2", "rle", "jls"])
def test_ohif_default_accept_on_compressed_frames_gets_the_codestream(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected], name: str
) -> None:
    inst = instances[name]
    response = http.get(served.frames_url(inst, "3,1"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/octet-stream"; boundary=')
    assert (
        f"Content-Type: application/octet-stream; transfer-syntax={inst.syntax}\r\n".encode()
        in (response.content)
    )
    assert cornerstone_parse(content_type, response.content) == (inst.syntax, inst.frames[2])


@pytest.mark.parametrize("name", ["jp2", "rle", "jls"])
def test_cornerstone_compressed_multipart_and_single_part(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected], name: str
) -> None:
    inst = instances[name]
    accept = f'multipart/related; type="{inst.index.media_type}"; transfer-syntax=*'
    response = http.get(served.frames_url(inst, "2%2C6"), headers={"Accept": accept})
    assert response.status_code == 200
    assert cornerstone_parse(response.headers["content-type"], response.content) == (
        inst.syntax,
        inst.frames[1],
    )
    response = http.get(served.frames_url(inst, "6"), headers={"Accept": inst.index.media_type})
    assert response.status_code == 200
    assert (
        response.headers["content-type"]
        == f"{inst.index.media_type}; transfer-syntax={inst.syntax}"
    )
    assert cornerstone_parse(response.headers["content-type"], response.content) == (
        inst.syntax,
        inst.frames[5],
    )


def test_single_part_octet_stream_is_exact_and_not_gzipped(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    response = http.get(
        served.frames_url(inst, "1"),
        headers={"Accept": "application/octet-stream", "Accept-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/octet-stream; transfer-syntax={EVLE}"
    assert response.content == inst.frames[0]
    assert response.headers["content-length"] == str(len(inst.frames[0]))
    assert "content-encoding" not in response.headers
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["vary"] == "Accept"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_frame_list_in_request_order_with_mime_parser(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    import email.parser
    import email.policy

    inst = instances["rle"]
    response = http.get(served.frames_url(inst, "9,2,5"), headers={"Accept": "*/*"})
    assert response.status_code == 200
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    parts = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == [
        inst.frames[8],
        inst.frames[1],
        inst.frames[4],
    ]
    assert [p["Content-Location"].rsplit("/", 1)[1] for p in parts] == ["9", "2", "5"]


# Errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ("0", "positive"),
        ("1,,2", "positive"),
        ("a", "positive"),
        ("2,2", "twice"),
        ("6", "beyond"),
        (",".join(map(str, range(1, 14))), "at most 12"),
    ],
)
def test_bad_frame_lists_are_400(
    http: httpx.Client,
    served: RunningOrigin,
    instances: dict[str, Expected],
    frames: str,
    reason: str,
) -> None:
    response = http.get(served.frames_url(instances["native"], frames))
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_unknown_instance_is_404_and_bad_uid_400(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    url = f"{served.root}/studies/{inst.study}/series/{inst.series}/instances/1.2.3.999/frames/1"
    assert http.get(url).status_code == 404
    assert http.get(url.replace("/frames/1", "/metadata")).status_code == 404
    assert http.get(f"{served.root}/studies/1.2.3.999/metadata").status_code == 404
    assert (
        http.get(f"{served.root}/studies/{inst.study}/series/1.2.999/metadata").status_code == 404
    )
    bad = f"{served.root}/studies/{inst.study}/series/{inst.series}/instances/abc/frames/1"
    assert http.get(bad).status_code == 400


def test_unacceptable_is_406_naming_what_is_available(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["jp2"]
    plain_octet_stream = 'multipart/related; type="application/octet-stream"'  # = Explicit VR LE
    response = http.get(served.frames_url(inst, "1"), headers={"Accept": plain_octet_stream})
    assert response.status_code == 406
    body = response.json()
    assert any("image/jp2" in offer and inst.syntax in offer for offer in body["available"])
    response = http.get(
        served.frames_url(instances["native"], "1,2"),
        headers={"Accept": "application/octet-stream"},
    )
    assert response.status_code == 406


# Caching headers, ranges, HEAD --------------------------------------------------------


def test_etag_304_range_206_416_and_head(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    url = served.frames_url(inst, "3")
    single = {"Accept": "application/octet-stream"}
    first = http.get(url, headers=single)
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = http.get(url, headers={**single, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    # The multipart representation has its own ETag.
    multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
    assert multi.headers["etag"] != etag
    assert (
        http.get(
            url, headers={"Accept": OHIF_ACCEPT, "If-None-Match": multi.headers["etag"]}
        ).status_code
        == 304
    )
    assert http.get(url, headers={"Accept": OHIF_ACCEPT}).content == multi.content  # stable bytes

    size = len(inst.frames[2])
    part = http.get(url, headers={**single, "Range": "bytes=10-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-99/{size}"
    assert part.content == inst.frames[2][10:100]
    tail = http.get(url, headers={**single, "Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == inst.frames[2][-16:]
    stale = http.get(url, headers={**single, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == inst.frames[2]
    beyond = http.get(url, headers={**single, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"

    head = http.head(url, headers=single)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(size)
    assert head.content == b""
    head = http.head(served.frames_url(inst, "1,2"))
    assert head.headers["content-length"] == str(
        len(http.get(served.frames_url(inst, "1,2")).content)
    )


def test_metadata_etag_and_gzip(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    inst = instances["native"]
    url = f"{served.instance_url(inst)}/metadata"
    plain = http.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/dicom+json"
    assert "content-encoding" not in plain.headers
    zipped = http.get(url, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.json() == plain.json()  # httpx decodes gzip
    assert isinstance(plain.json(), list) and len(plain.json()) == 1
    assert (
        http.get(
            url, headers={"Accept-Encoding": "identity", "If-None-Match": plain.headers["etag"]}
        ).status_code
        == 304
    )
    assert http.get(url, headers={"Accept": "image/png"}).status_code == 406


def test_cors_preflight_and_simple_response(
    http: httpx.Client, served: RunningOrigin, instances: dict[str, Expected]
) -> None:
    url = served.frames_url(instances["native"], "1")
    response = http.options(
        url,
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization, range",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "accept", "range"} <= allowed
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"content-range", "content-location", "etag"} <= exposed
    assert int(response.headers["access-control-max-age"]) > 0
    got = http.get(url, headers={"Origin": "https://viewer.example", "Accept": OHIF_ACCEPT})
    assert got.headers["access-control-allow-origin"] == "*"


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (0 when the labelled series is not there yet)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_health_ready_and_metrics(
    module_settings: Settings, instances: dict[str, Expected]
) -> None:
    """Its own origin, its own miss; a response read in full is counted at once, every time."""
    inst = instances["native"]
    with run_origin(module_settings) as served, httpx.Client(timeout=30) as http:
        assert http.get(f"{served.base}/healthz").json() == {"status": "ok"}
        assert http.get(f"{served.base}/readyz").status_code == 200
        missing = served.frames_url(inst, "1").replace(inst.sop, "1.2.3.999")
        not_found = http.get(missing)
        assert not_found.status_code == 404
        frame_url = served.frames_url(inst, "1")
        frames_ok = {"route": "frames", "mode": "stream", "status": "200"}
        for served_count in range(1, 31):
            assert http.get(frame_url).status_code == 200
            metrics = http.get(f"{served.base}/metrics").text  # immediately
            assert counter(metrics, "framecdn_requests_total", **frames_ok) == served_count
        assert counter(metrics, "framecdn_instance_lookups_total", result="miss") == 1
        assert counter(metrics, "framecdn_instance_lookups_total", result="hit") == 30
        assert (
            counter(metrics, "framecdn_requests_total", route="frames", mode="stream", status="404")
            == 1
        )
        body = counter(metrics, "framecdn_response_bytes_total", route="frames", mode="stream")
        assert body == 30 * int(http.head(frame_url).headers["content-length"]) + len(
            not_found.content
        )
        assert (
            counter(metrics, "framecdn_request_seconds_count", route="frames", mode="stream") == 31
        )
