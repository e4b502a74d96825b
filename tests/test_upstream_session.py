"""The origin as a viewer's whole DICOMweb root, with a real Orthanc (DICOMweb plugin) as the
upstream, a real SeaweedFS bucket and the fill service.

A viewer-style session (QIDO study search, series search, series metadata, frames) works
with the bucket empty and only the upstream set; afterwards the same session is served
from the bucket, which the origin's metrics show (not timing). No answer, body or header,
names Orthanc's host and port.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from tests.origin_fixtures import RunningOrigin, run_origin
from tests.upstream_fixtures import (
    JSON,
    OHIF_FRAMES,
    Upstream,
    first_part,
    metric,
    populated_orthanc,
    running_fill,
    upstream_settings,
    wait_for_metric,
)

STUDY_FIELDS = "includefield=00081030%2C00080060%2C00080090%2C00100030"
SERIES_FIELDS = "includefield=00080021%2C00080031%2C0008103E%2C00200011"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with populated_orthanc(
        tmp_path_factory.mktemp("upstream-data"), tmp_path_factory.mktemp("orthanc")
    ) as populated:
        yield populated


@dataclass
class Session:
    answers: list[httpx.Response]

    def check_private(self, host_port: str) -> None:
        for answer in self.answers:
            assert host_port.encode() not in answer.content, answer.url
            for name, value in answer.headers.items():
                assert host_port not in value, (answer.url, name)


def viewer_session(origin: RunningOrigin, upstream: Upstream) -> Session:
    """What OHIF asks when it opens the study, and every frame of every instance."""
    answers = []
    with httpx.Client(base_url=origin.root, timeout=60) as http:
        def get(path: str, accept: str = JSON) -> httpx.Response:
            answer = http.get(path, headers={"Accept": accept})
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            answers.append(answer)
            return answer

        query = f"/studies?limit=101&offset=0&fuzzymatching=false&{STUDY_FIELDS}"
        (study,) = get(f"{query}&StudyInstanceUID={upstream.study}").json()
        assert study["00201208"]["Value"] == [3]
        series = get(f"/studies/{upstream.study}/series?{SERIES_FIELDS}").json()
        assert sorted(s["0020000E"]["Value"][0] for s in series) == upstream.series()
        get(f"{query}&00100020=UP1")
        for uid in upstream.series():
            metadata = get(f"/studies/{upstream.study}/series/{uid}/metadata").json()
            held = [i for i in upstream.instances if i.key.series == uid]
            assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(
                i.key.instance for i in held
            )
            for instance in held:
                key = instance.key
                base = f"/studies/{key.study}/series/{key.series}/instances/{key.instance}"
                for number, expected in enumerate(instance.frames, start=1):
                    answer = get(f"{base}/frames/{number}", OHIF_FRAMES)
                    assert first_part(answer) == expected, (key.instance, number)
    return Session(answers)


def test_a_viewer_session_reads_through_and_then_comes_from_the_bucket(
    settings: Settings, upstream: Upstream
) -> None:
    with running_fill(upstream_settings(settings, upstream.orthanc)) as fill, run_origin(
        upstream_settings(settings, upstream.orthanc, fill_url=fill.url), public_url=True
    ) as origin:
        first = viewer_session(origin, upstream)
        first.check_private(upstream.host_port)
        # The bucket was empty: the metadata came from Orthanc, and the instances were queued.
        assert metric(origin, "framecdn_upstream_requests", route="metadata_series",
                      status="200") == 2
        assert wait_for_metric(origin, "framecdn_fill_requests", 3, result="queued") == 3
        fill.wait_idle()
        assert fill.filler.status()["ingested"] == 3

        before = {
            name: metric(origin, "framecdn_upstream_requests", route=name)
            for name in ("frames", "metadata_series", "metadata_instance", "proxy")
        }
        hits = metric(origin, "framecdn_instance_lookups", result="hit")
        second = viewer_session(origin, upstream)
        second.check_private(upstream.host_port)
        after = {
            name: metric(origin, "framecdn_upstream_requests", route=name) for name in before
        }
        assert after == before, "nothing but searches and completeness checks went upstream"
        frames = sum(len(i.frames) for i in upstream.instances)
        assert metric(origin, "framecdn_instance_lookups", result="hit") - hits == frames
        assert metric(origin, "framecdn_requests", route="metadata_series", mode="-",
                      status="200") == 2  # the second time: from the bucket
        assert metric(origin, "framecdn_fill_requests", result="queued") == 3  # no new fills


def test_frames_of_a_missing_instance_come_from_the_upstream_at_once(
    settings: Settings, upstream: Upstream
) -> None:
    """No fill service at all: every frame is the upstream's, byte for byte."""
    instance = upstream.instances[0]
    key = instance.key
    with run_origin(upstream_settings(settings, upstream.orthanc)) as origin, httpx.Client(
        base_url=origin.root
    ) as http:
        base = f"/studies/{key.study}/series/{key.series}/instances/{key.instance}"
        for number, expected in enumerate(instance.frames, start=1):
            answer = http.get(f"{base}/frames/{number}", headers={"Accept": OHIF_FRAMES})
            assert answer.status_code == 200
            assert first_part(answer) == expected
            assert upstream.host_port.encode() not in answer.content
            assert answer.headers["cache-control"] == "no-store"
        assert metric(origin, "framecdn_upstream_requests", route="frames", status="200") == 3
        metadata = http.get(f"{base}/metadata", headers={"Accept": JSON})
        assert metadata.status_code == 200
        bulk = metadata.json()[0]["7FE00010"]["BulkDataURI"]
        assert bulk.startswith(origin.root + "/")  # rewritten to point here
        followed = http.get(bulk, headers={"Accept": "multipart/related; "
                                           'type="application/octet-stream"'})
        assert followed.status_code == 200
        assert first_part(followed) == b"".join(instance.frames)


def test_everything_else_is_proxied_and_rewritten(settings: Settings, upstream: Upstream,
                                                   tmp_path: Path) -> None:
    """Whole-study and instance retrieval, rendered, search levels: all through the origin."""
    key = upstream.instances[2].key
    with run_origin(upstream_settings(settings, upstream.orthanc), public_url=True) as origin, \
            httpx.Client(base_url=origin.root, timeout=60) as http:
        answers = []
        for path, accept in [
            (f"/studies/{key.study}", 'multipart/related; type="application/dicom"'),
            (f"/studies/{key.study}/series/{key.series}/instances/{key.instance}",
             'multipart/related; type="application/dicom"'),
            (f"/studies/{key.study}/series/{key.series}/instances/{key.instance}/rendered",
             "image/jpeg"),
            (f"/studies/{key.study}/instances", JSON),
            (f"/studies/{key.study}/series/{key.series}/instances", JSON),
            (f"/series?StudyInstanceUID={key.study}", JSON),
            (f"/instances?StudyInstanceUID={key.study}", JSON),
            (f"/studies/{key.study}/metadata", JSON),
        ]:
            answer = http.get(path, headers={"Accept": accept})
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            answers.append(answer)
        Session(answers).check_private(upstream.host_port)
        study, instance, rendered = answers[0], answers[1], answers[2]
        assert study.content.count(b"DICM") == 3  # the three Part 10 files
        assert upstream.instances[2].path.read_bytes()[128:132] == b"DICM"
        assert first_part(instance) == upstream.instances[2].path.read_bytes()
        assert rendered.content.startswith(b"\xff\xd8")  # a JPEG, passed as it is
        assert rendered.headers["content-length"] == str(len(rendered.content))
        retrieve = [e["00081190"]["Value"][0] for e in answers[3].json()]
        assert all(url.startswith(f"{origin.root}/studies/{key.study}/") for url in retrieve)
        missing = http.get(f"/studies/{generate_uid()}", headers={"Accept": "multipart/related; "
                                                                  'type="application/dicom"'})
        assert missing.status_code == 404 and missing.json()["error"] == "not found"
        assert upstream.host_port not in missing.text


def test_series_metadata_is_never_incomplete(settings: Settings, upstream: Upstream) -> None:
    """The bucket holds one of the series' two instances: the upstream answers, the other
    instance is filled, and then the bucket answers with both."""
    held, missing = upstream.instances[0], upstream.instances[1]
    ingest_file(held.path, settings)
    path = f"/studies/{upstream.study}/series/{held.key.series}/metadata"
    with running_fill(upstream_settings(settings, upstream.orthanc)) as fill, run_origin(
        upstream_settings(settings, upstream.orthanc, fill_url=fill.url)
    ) as origin, httpx.Client(base_url=origin.root) as http:
        answer = http.get(path, headers={"Accept": JSON})
        assert answer.status_code == 200 and len(answer.json()) == 2
        assert answer.headers["cache-control"] == "no-store"  # the upstream's: not cached
        assert metric(origin, "framecdn_upstream_requests", route="metadata_series") == 1
        # only the missing one
        assert wait_for_metric(origin, "framecdn_fill_requests", 1, result="queued") == 1
        fill.wait_idle()
        layout = KeyLayout(settings.prefix)
        assert Bucket.from_settings(settings).get_or_none(layout.index(missing.key)) is not None
        settled = None
        for _ in range(100):  # the rendered listing is reused for up to 10 s
            settled = http.get(path, headers={"Accept": JSON})
            if settled.headers["cache-control"] != "no-store":
                break
            time.sleep(0.2)
        assert settled is not None and settled.status_code == 200
        assert len(settled.json()) == 2
        assert settled.headers["cache-control"] == settings.metadata_cache_control
        assert metric(origin, "framecdn_upstream_requests", route="check_series") >= 2


def test_a_study_search_without_upstream_match_is_empty_not_an_error(
    settings: Settings, upstream: Upstream
) -> None:
    with run_origin(upstream_settings(settings, upstream.orthanc)) as origin:
        answer = httpx.get(f"{origin.root}/studies?PatientID=NOBODY-{uuid.uuid4().hex[:6]}",
                           headers={"Accept": JSON})
        assert (answer.status_code, answer.json()) == (200, [])
        assert answer.headers["content-type"] == JSON

