"""Instances without Pixel Data (SR, KO, RT Plan, Presentation State) are metadata-only.

A PACS folder always holds some; they used to count as failed, so a scheduled ingest
exited 1 every time. Now they are stored with their metadata and an index of zero
frames, reported as "metadata-only", served in study and series metadata, and a frames
request for one is a client error, never a 5xx.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from framecdn.cli.ingest import summary as ingest_summary
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest.pipeline import ingest_paths
from framecdn.ingest.splitter import InvalidInstance, open_instance
from framecdn.synthetic import write_tomosynthesis
from tests.cli_fixtures import run_framecdn
from tests.conftest import list_keys
from tests.dicom_files import write_metadata_only
from tests.origin_fixtures import run_origin

KINDS = ("sr", "ko", "rtplan", "pr")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEG2000],
    ids=["implicit", "deflated", "jpeg2000-syntax"],
)
def test_splitter_opens_instances_without_pixel_data(tmp_path: Path, kind, syntax) -> None:
    """Some archives store SRs under an image syntax: the dataset is still readable."""
    written = write_metadata_only(tmp_path / f"{kind}.dcm", kind, syntax=syntax)
    with open_instance(tmp_path / f"{kind}.dcm") as instance:
        assert instance.metadata_only and instance.number_of_frames == 0
        assert list(instance.frames()) == [] and list(instance.frame_readers()) == []
        assert instance.media_type == ""
        assert instance.transfer_syntax_uid == instance.source_transfer_syntax_uid == syntax
        assert instance.dataset.SOPInstanceUID == written.SOPInstanceUID
        assert instance.dataset.Modality == written.Modality
        if kind in ("sr", "ko"):
            assert instance.dataset.ContentSequence[0].TextValue == "No evidence of cancer."


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "reportsi.dcm"])
def test_bundled_documents_are_metadata_only(name: str) -> None:
    with open_instance(get_testdata_file(name)) as instance:
        assert instance.number_of_frames == 0
        expected = pydicom.dcmread(get_testdata_file(name))
        assert instance.dataset.to_json_dict() == expected.to_json_dict()


def test_an_image_without_pixel_data_is_still_refused(tmp_path: Path) -> None:
    """Rows and Columns but no Pixel Data: a damaged image, not a document."""
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8, pixel_data=False)
    refusal = "no Pixel Data element, though Rows is present"
    with pytest.raises(InvalidInstance, match=refusal), open_instance(made.path):
        pass


def test_truncated_document_is_refused(tmp_path: Path) -> None:
    truncated = get_testdata_file("rtplan_truncated.dcm")
    with pytest.raises(InvalidInstance, match="truncated"), open_instance(truncated):
        pass


# -- ingest and origin, against the real store ------------------------------------------


def _pacs_folder(root: Path) -> dict[str, Path]:
    """Two images and four documents of one study, as a PACS export lays them out."""
    root.mkdir()
    image = write_tomosynthesis(root / "img1.dcm", frames=3, rows=16, columns=16)
    write_tomosynthesis(
        root / "img2.dcm", frames=2, rows=16, columns=16, seed=1,
        study_uid=image.study_uid, series_uid=image.series_uid,
    )
    files = {"image": image.path}
    for kind in KINDS:
        path = root / f"{kind}.dcm"
        write_metadata_only(path, kind, study_uid=image.study_uid)
        files[kind] = path
    return files


def _key(path: Path) -> InstanceKey:
    ds = pydicom.dcmread(path)
    return InstanceKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def test_a_pacs_folder_with_documents_ingests_cleanly(s3_client, settings, tmp_path) -> None:
    files = _pacs_folder(tmp_path / "pacs")
    report = ingest_paths([tmp_path / "pacs"], settings, progress=False)
    statuses = {Path(r.source).stem: r.status for r in report.results}
    assert statuses == {
        "img1": "ingested", "img2": "ingested",
        "sr": "metadata-only", "ko": "metadata-only", "rtplan": "metadata-only",
        "pr": "metadata-only",
    }
    assert report.ok
    summary = ingest_summary(report)
    assert summary.startswith("2 instances ingested, 4 metadata-only, 0 unchanged, 0 failed")
    layout = KeyLayout(settings.prefix)
    for kind in KINDS:
        key = _key(files[kind])
        keys = list_keys(s3_client, settings.bucket, layout.instance_prefix(key))
        raw = s3_client.get_object(Bucket=settings.bucket, Key=layout.index(key))["Body"].read()
        index = InstanceIndex.from_json(raw)
        assert sorted(keys) == sorted(  # no frames; the file's bytes kept whole in part10
            [layout.metadata_of(index), layout.part10_of(index), layout.index(key)]
        )
        assert index.number_of_frames == 0 and index.frames == ()
        assert index.media_type == "" and index.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        metadata = s3_client.get_object(Bucket=settings.bucket, Key=layout.metadata_of(index))
        body = json.loads(metadata["Body"].read())
        assert "7FE00010" not in body and "00280008" not in body
        assert body["00080018"]["Value"] == [key.instance]
        if kind == "sr":
            assert body["0040A730"]["Value"][0]["0040A160"]["Value"] == ["No evidence of cancer."]
    again = ingest_paths([tmp_path / "pacs"], settings, progress=False)
    assert {r.status for r in again.results} == {"skipped"}


def test_cli_exits_zero_on_a_folder_with_documents(settings, tmp_path) -> None:
    _pacs_folder(tmp_path / "pacs")
    done = run_framecdn(settings, "ingest", "--no-progress", str(tmp_path / "pacs"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 instances ingested, 4 metadata-only" in done.stdout
    assert "FAILED" not in done.stderr


def test_origin_serves_documents_in_metadata_and_refuses_their_frames(settings, tmp_path) -> None:
    files = _pacs_folder(tmp_path / "pacs")
    assert ingest_paths([tmp_path / "pacs"], settings, progress=False).ok
    image, sr = _key(files["image"]), _key(files["sr"])
    with run_origin(settings) as origin, httpx.Client(timeout=30) as client:
        study = client.get(f"{origin.root}/studies/{image.study}/metadata")
        assert study.status_code == 200
        uids = {item["00080018"]["Value"][0] for item in study.json()}
        assert {_key(files[kind]).instance for kind in KINDS} <= uids
        series = client.get(f"{origin.root}/studies/{sr.study}/series/{sr.series}/metadata")
        assert series.status_code == 200
        assert [item["00080018"]["Value"][0] for item in series.json()] == [sr.instance]
        instance = f"{origin.root}/studies/{sr.study}/series/{sr.series}/instances/{sr.instance}"
        assert client.get(f"{instance}/metadata").status_code == 200
        multipart = 'multipart/related; type="application/octet-stream"'
        for frames, accept in (("1", "*/*"), ("1,2", multipart)):
            answer = client.get(f"{instance}/frames/{frames}", headers={"Accept": accept})
            assert answer.status_code in (400, 404), (frames, answer.status_code, answer.text)
