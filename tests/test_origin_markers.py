"""Access markers: written for studies that were served, never for requests that failed.

A 404 must not write to the bucket (a client guessing UIDs would fill it with markers),
nor may a 400/406/416 or a 404 inside a study that exists. Real uvicorn, real SeaweedFS.
"""

from __future__ import annotations

import httpx
from pydicom.uid import generate_uid

from framecdn.framestore.access import decode_marker
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys
from tests.origin_fixtures import flush_access_markers, ingest, run_origin

SINGLE = {"Accept": "application/octet-stream"}


def test_only_served_requests_leave_access_markers(settings: Settings, s3_client, tmp_path) -> None:
    write_tomosynthesis(tmp_path / "a.dcm", frames=3, rows=16, columns=16, seed=4)
    known = ingest(tmp_path / "a.dcm", settings)
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        root = served.root
        refused: list[tuple[str, dict[str, str], int]] = []
        for _ in range(5):  # guessed UIDs
            study, series, sop = generate_uid(), generate_uid(), generate_uid()
            instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
            refused += [
                (f"{root}/studies/{study}/metadata", {}, 404),
                (f"{root}/studies/{study}/series/{series}/metadata", {}, 404),
                (f"{instance}/metadata", {}, 404),
                (f"{instance}/frames/1", {}, 404),
            ]
        in_known_study = f"{root}/studies/{known.study}/series/{known.series}/instances/1.2.3.4"
        refused += [
            (f"{in_known_study}/frames/1", {}, 404),  # unknown instance of a known study
            (f"{in_known_study}/metadata", {}, 404),
            (f"{root}/studies/{known.study}/series/1.2.3.5/metadata", {}, 404),
            (served.frames_url(known, "9"), {}, 400),  # beyond NumberOfFrames
            (served.frames_url(known, "1"), {"Accept": "image/jp2"}, 406),
            (served.frames_url(known, "1"), {**SINGLE, "Range": "bytes=99999-"}, 416),
            (f"{served.instance_url(known)}/metadata", {"Accept": "image/png"}, 406),
        ]
        for url, headers, status in refused:
            assert http.get(url, headers=headers).status_code == status, url
        flush_access_markers(served)
        prefix = served.origin.layout.access_prefix()
        assert list_keys(s3_client, settings.bucket, prefix) == []

        # What was served leaves one marker, for its study.
        assert http.get(served.frames_url(known, "2"), headers=SINGLE).status_code == 200
        assert flush_access_markers(served) == 1
        key = served.origin.layout.access_marker(known.study)
        assert list_keys(s3_client, settings.bucket, prefix) == [key]
        body = s3_client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        assert decode_marker(body)[0] == known.study


def test_metadata_and_not_modified_answers_count_as_reads(
    settings: Settings, s3_client, tmp_path
) -> None:
    write_tomosynthesis(tmp_path / "b.dcm", frames=2, rows=8, columns=8, seed=6)
    known = ingest(tmp_path / "b.dcm", settings)
    # One public URL: both origins render the same bytes, hence the same ETag.
    settings = settings.with_overrides(public_url="https://viewer.example")
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        key = served.origin.layout.access_marker(known.study)
        first = http.get(f"{served.root}/studies/{known.study}/metadata")
        assert first.status_code == 200
        assert flush_access_markers(served) == 1
    marker = s3_client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    assert decode_marker(marker)[0] == known.study
    s3_client.delete_object(Bucket=settings.bucket, Key=key)
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:  # a fresh recorder
        again = http.get(
            f"{served.root}/studies/{known.study}/metadata",
            headers={"If-None-Match": first.headers["etag"]},
        )
        assert again.status_code == 304
        assert flush_access_markers(served) == 1
    assert list_keys(s3_client, settings.bucket, key) == [key]
