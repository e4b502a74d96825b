"""Ingest against the real store: every frame byte-exact, commit marker last, bad input isolated."""

from __future__ import annotations

import hashlib
import io
import json
import signal
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from framecdn.framestore.index import FrameEntry, InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.retention import RETENTION_TAG
from framecdn.ingest.pipeline import Ingestor, ingest_file, ingest_paths
from framecdn.synthetic import write_encapsulated, write_tomosynthesis
from tests.cli_fixtures import cli_environment, framecdn_command
from tests.conftest import list_keys
from tests.processes import frozen_when, running


def _get(client, settings, key: str) -> bytes:
    return client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()


def test_native_tomosynthesis_is_stored_frame_by_frame(s3_client, settings, tmp_path) -> None:
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=5, rows=64, columns=48)
    index = ingest_file(generated.path, settings)

    layout = KeyLayout(settings.prefix)
    key = InstanceKey(generated.study_uid, generated.series_uid, generated.sop_uid)
    assert index.number_of_frames == 5
    assert index.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert index.media_type == "application/octet-stream"
    pixel_data = pydicom.dcmread(generated.path).PixelData
    frame_length = 64 * 48 * 2
    for number in range(1, 6):
        body = _get(s3_client, settings, layout.frame_of(index, number))
        expected = pixel_data[(number - 1) * frame_length : number * frame_length]
        assert body == expected
        digest = hashlib.sha256(expected).hexdigest()
        assert index.frame(number) == FrameEntry(len(expected), digest)
    head = s3_client.head_object(Bucket=settings.bucket, Key=layout.frame_of(index, 1))
    assert head["ContentType"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    tags = s3_client.get_object_tagging(Bucket=settings.bucket, Key=layout.frame_of(index, 1))
    assert {"Key": RETENTION_TAG, "Value": "cache"} in tags["TagSet"]
    assert sorted(list_keys(s3_client, settings.bucket, layout.instance_prefix(key))) == sorted(
        [layout.frame_of(index, n) for n in range(1, 6)]
        + [layout.metadata_of(index), layout.part10_of(index), layout.index(key)]
    )
    assert InstanceIndex.from_json(_get(s3_client, settings, layout.index(key))) == index


def test_metadata_is_dicom_json_with_bulk_data_uri(s3_client, settings, tmp_path) -> None:
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=3, rows=16, columns=16)
    index = ingest_file(generated.path, settings)
    key = InstanceKey(generated.study_uid, generated.series_uid, generated.sop_uid)
    body = json.loads(_get(s3_client, settings, KeyLayout(settings.prefix).metadata_of(index)))
    assert body["7FE00010"]["BulkDataURI"] == (
        f"studies/{key.study}/series/{key.series}/instances/{key.instance}/frames/1,2,3"
    )
    assert body["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]
    assert body["00280008"]["Value"] == [3]
    assert body["00280010"]["Value"] == [16]  # Rows: the image pixel module is there
    dataset = pydicom.Dataset.from_json(
        {k: v for k, v in body.items() if k != "7FE00010" and not k.startswith("0002")}
    )
    assert dataset.SOPInstanceUID == key.instance
    assert dataset.PatientName == pydicom.dcmread(generated.path).PatientName


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, 10 frames
        "emri_small_RLE.dcm",  # RLE, 10 frames
        "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG baseline, RGB
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
        "JPEG-lossy.dcm",  # JPEG extended
        "MR_small_bigendian.dcm",  # native big endian -> little endian
        "image_dfl.dcm",  # deflated explicit VR LE
    ],
)
def test_pydicom_test_files_byte_exact(s3_client, settings, name) -> None:
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
    else:
        data = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
        length = len(data) // frames
        expected = [data[i * length : (i + 1) * length] for i in range(frames)]
    index = ingest_file(path, settings)
    layout = KeyLayout(settings.prefix)
    assert index.number_of_frames == len(expected)
    for number, frame in enumerate(expected, start=1):
        assert _get(s3_client, settings, layout.frame_of(index, number)) == frame
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        assert index.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_reingest_is_skipped_and_force_rewrites(s3_client, settings, tmp_path) -> None:
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=4, rows=32, columns=32)
    layout = KeyLayout(settings.prefix)
    key = InstanceKey(generated.study_uid, generated.series_uid, generated.sop_uid)
    first = ingest_paths([generated.path], settings, progress=False)
    assert first.count("ingested") == 1
    puts: list[str] = []
    with Ingestor(settings) as ingestor:
        ingestor.bucket.client.meta.events.register(
            "provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"])
        )
        again = ingestor.ingest(generated.path)
    assert again.status == "skipped" and puts == []
    with Ingestor(settings, force=True) as ingestor:
        ingestor.bucket.client.meta.events.register(
            "provide-client-params.s3.PutObject", lambda params, **_: puts.append(params["Key"])
        )
        result = ingestor.ingest(generated.path)
        assert result.status == "ingested", result.reason
    assert len(puts) == 4 + 3
    # The commit marker goes last, after every frame, the metadata and the part10 object.
    assert result.index is not None
    assert puts[-1] == layout.index(key) and puts[-2] == layout.part10_of(result.index)
    assert puts[-3] == layout.metadata_of(result.index)


def test_a_different_file_under_the_same_uid_replaces_the_instance(
    s3_client, settings, tmp_path
) -> None:
    uids = dict(study_uid="1.2.826.0.1.1", series_uid="1.2.826.0.1.2", sop_uid="1.2.826.0.1.3")
    old = write_tomosynthesis(tmp_path / "a.dcm", frames=4, rows=16, columns=16, seed=1, **uids)
    new = write_tomosynthesis(tmp_path / "b.dcm", frames=2, rows=16, columns=16, seed=2, **uids)
    ingest_file(old.path, settings)
    index = ingest_file(new.path, settings)
    assert index.number_of_frames == 2
    assert _get(s3_client, settings, KeyLayout(settings.prefix).frame_of(index, 2)) == new.frame(2)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    good = write_tomosynthesis(tmp_path / "good.dcm", frames=3, rows=32, columns=32)
    raw = good.path.read_bytes()
    files = {
        "not-dicom": tmp_path / "notes.txt",
        "truncated": tmp_path / "truncated.dcm",
        "no-pixel-data": tmp_path / "nopixels.dcm",
        "short-pixel-data": tmp_path / "short.dcm",
        "corrupt-fragments": tmp_path / "corrupt.dcm",
        "missing-uid": tmp_path / "nouid.dcm",
        "bad-uid": tmp_path / "baduid.dcm",
    }
    files["not-dicom"].write_text("this is a radiology report, not an image\n" * 50)
    files["truncated"].write_bytes(raw[: len(raw) - 1000])
    write_tomosynthesis(files["no-pixel-data"], frames=3, rows=32, columns=32, pixel_data=False)
    # Pixel Data whose length field claims fewer bytes than Rows x Columns x frames.
    ds = pydicom.dcmread(good.path)
    ds.PixelData = ds.PixelData[: 32 * 32 * 2 * 2]
    ds.save_as(files["short-pixel-data"])
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm"))
    codestream = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    write_encapsulated(
        files["corrupt-fragments"],
        [codestream, codestream],
        transfer_syntax_uid="1.2.840.10008.1.2.4.50",
        rows=jpeg.Rows,
        columns=jpeg.Columns,
        samples_per_pixel=3,
        photometric_interpretation="YBR_FULL_422",
    )
    corrupt = bytearray(files["corrupt-fragments"].read_bytes())
    second_item = corrupt.rfind(b"\xfe\xff\x00\xe0")
    corrupt[second_item : second_item + 4] = b"\xde\xad\xbe\xef"
    files["corrupt-fragments"].write_bytes(bytes(corrupt))
    ds = pydicom.dcmread(good.path)
    del ds.SeriesInstanceUID
    ds.save_as(files["missing-uid"])
    ds = pydicom.dcmread(good.path)
    ds.SOPInstanceUID = "1.2.3/../../evil"
    ds.save_as(files["bad-uid"])
    return files


def test_bad_inputs_fail_alone_and_leave_nothing(s3_client, settings, tmp_path) -> None:
    bad = _bad_inputs(tmp_path / "in")
    report = ingest_paths([tmp_path / "in"], settings, progress=False)
    by_name = {Path(r.source).name: r for r in report.results}
    assert by_name["good.dcm"].status == "ingested"
    for label, path in bad.items():
        result = by_name[path.name]
        assert result.status == "failed", label
        assert result.reason and "\n" not in result.reason, label
    assert not report.ok
    # Only the good instance is in the bucket: no index, no orphan frames of the others.
    keys = list_keys(s3_client, settings.bucket, KeyLayout(settings.prefix).prefix)
    good = pydicom.dcmread(tmp_path / "in" / "good.dcm", stop_before_pixels=True)
    assert keys and all(f"/instances/{good.SOPInstanceUID}/" in k for k in keys)


class FailingFile(io.FileIO):
    """A file whose reads fail (as a disk or network share can) from byte ``fail_at`` on."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path, "rb")
        self.fail_at = fail_at

    def _check(self, size: int) -> None:
        if size < 0 or self.tell() + size > self.fail_at:
            raise OSError(5, "Input/output error (simulated)")

    def read(self, size: int = -1) -> bytes:
        self._check(size)
        return super().read(size)

    def readinto(self, buffer) -> int:
        self._check(len(buffer))
        return super().readinto(buffer)


def test_an_instance_failing_after_its_first_frames_leaves_nothing(
    s3_client, settings, tmp_path
) -> None:
    """The read fails at frame 5 of 6: frames 1..4 were uploaded, and must go again."""
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=6, rows=64, columns=64)
    frame_length = 64 * 64 * 2
    fail_at = generated.path.stat().st_size - 2 * frame_length + 10
    layout = KeyLayout(settings.prefix)
    key = InstanceKey(generated.study_uid, generated.series_uid, generated.sop_uid)
    uploaded: list[str] = []
    with Ingestor(settings) as ingestor, FailingFile(generated.path, fail_at) as source:
        ingestor.bucket.client.meta.events.register(
            "provide-client-params.s3.PutObject", lambda params, **_: uploaded.append(params["Key"])
        )
        result = ingestor.ingest(source, name="tomo.dcm")
    assert result.status == "failed" and "Input/output error" in result.reason
    # It got far: some frames were uploaded (how many depends on the upload threads).
    assert uploaded and {u.rsplit("/", 1)[1] for u in uploaded} <= {"1", "2", "3", "4"}
    assert all(u.startswith(layout.instance_prefix(key)) and "/frames/" in u for u in uploaded)
    assert list_keys(s3_client, settings.bucket, KeyLayout(settings.prefix).prefix) == []


def _cli(settings, *args: str):
    """``framecdn ARGS`` in a subprocess for the test's prefix; killed if the test fails."""
    return running(framecdn_command(*args), env=cli_environment(settings))


def test_cli_reports_each_failure_and_exits_nonzero(settings, tmp_path) -> None:
    bad = _bad_inputs(tmp_path / "in")
    with _cli(settings, "ingest", "--no-progress", str(tmp_path / "in")) as process:
        out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    failures = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert len(failures) == len(bad)
    assert "1 instance ingested" in out and f"{len(bad)} failed" in out


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_ingest_is_invisible_and_a_rerun_completes(
    s3_client, settings, tmp_path, how
) -> None:
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=40, rows=1024, columns=1024)
    layout = KeyLayout(settings.prefix)
    key = InstanceKey(generated.study_uid, generated.series_uid, generated.sop_uid)
    command = ("ingest", "--no-progress", "--workers", "2", str(generated.path))
    with _cli(settings, *command) as process:
        def two_frames_stored() -> bool:
            keys = list_keys(s3_client, settings.bucket, layout.instance_prefix(key))
            return sum("/frames/" in k for k in keys) >= 2

        with frozen_when(process, two_frames_stored):
            process.send_signal(how)
        out, err = process.communicate(timeout=60)
    assert process.returncode != 0, (out, err)
    keys = list_keys(s3_client, settings.bucket, layout.instance_prefix(key))
    assert layout.index(key) not in keys  # nothing visible
    if how == signal.SIGINT:
        assert keys == []  # a clean interrupt removes what it wrote

    with _cli(settings, "ingest", "--no-progress", str(generated.path)) as rerun:
        _out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    index = InstanceIndex.from_json(_get(s3_client, settings, layout.index(key)))
    assert index.number_of_frames == 40
    for number in (1, 20, 40):
        assert _get(s3_client, settings, layout.frame_of(index, number)) == generated.frame(number)
