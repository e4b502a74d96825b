"""QIDO-RS answered from the bucket (no upstream): real SeaweedFS, real uvicorn origin,
httpx and dicomweb-client as the clients.

Three studies of two patients are ingested once for the module: the searches OHIF 3.13
sends when it opens a study (observed in a browser), the matching rules on real
records, the counts, the URLs, paging, the scope seam, and concurrent ingests of one
study (nothing to lose: the records are built from the study's own objects).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from starlette.types import ASGIApp, Receive, Scope, Send

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.origin.scope import SCOPE_KEY, ReadScope
from tests.dicom_factory import small_instance
from tests.nginx_fixtures import nginx_binary_or_none, run_nginx
from tests.origin_fixtures import RunningOrigin, run_origin

JSON = "application/dicom+json"
OHIF_STUDY_FIELDS = "includefield=00081030%2C00080060%2C00080090%2C00100030"
OHIF_SERIES_FIELDS = "includefield=00080021%2C00080031%2C0008103E%2C00200011"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def value(entry: dict, tag: str) -> object:
    element = entry.get(tag) or {}
    values = element.get("Value") or [None]
    first = values[0]
    return first.get("Alphabetic") if isinstance(first, dict) else first


class Studies:
    """Study A (ROE^MARY, P1, 2024-01-10): an MG series of 2 instances and an OT series of 1;
    study B (DOE^JANE, P2, 2024-02-20, CT); study C (ROE^MARY, P1, 2023-12-01, MG)."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.a, self.b, self.c = generate_uid(), generate_uid(), generate_uid()
        self.a_mg, self.a_ot = generate_uid(), generate_uid()
        self.a_mg_sops = [generate_uid(), generate_uid()]
        roe = {"PatientName": "ROE^MARY", "PatientID": "P1"}
        files = [
            small_instance(folder / "a1.dcm", study=self.a, series=self.a_mg,
                           sop=self.a_mg_sops[0], StudyDate="20240110", AccessionNumber="A-1",
                           InstanceNumber=2, **roe),
            small_instance(folder / "a2.dcm", study=self.a, series=self.a_mg,
                           sop=self.a_mg_sops[1], StudyDate="20240110", AccessionNumber="A-1",
                           InstanceNumber=1, **roe),
            small_instance(folder / "a3.dcm", study=self.a, series=self.a_ot,
                           StudyDate="20240110", AccessionNumber="A-1", Modality="OT",
                           SeriesNumber=2, SeriesDescription="Key images", **roe),
            small_instance(folder / "b.dcm", study=self.b, StudyDate="20240220",
                           AccessionNumber="B-2", Modality="CT", PatientName="DOE^JANE",
                           PatientID="P2"),
            small_instance(folder / "c.dcm", study=self.c, StudyDate="20231201",
                           AccessionNumber="C-3", **roe),
        ]
        for path in files:
            ingest_file(path, settings)


@pytest.fixture(scope="module")
def studies(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    return Studies(tmp_path_factory.mktemp("qido"), module_settings)


@pytest.fixture(scope="module")
def origin(module_settings: Settings, studies: Studies) -> Iterator[RunningOrigin]:
    with run_origin(module_settings, public_url=True) as running:
        yield running


@pytest.fixture
def http(origin: RunningOrigin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=origin.root, headers={"Accept": JSON}, timeout=30) as client:
        yield client


def search(http: httpx.Client, path: str) -> list[dict]:
    answer = http.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == JSON
    assert "private" in answer.headers["cache-control"]  # never in a shared cache
    return answer.json()


def test_the_searches_ohif_sends_to_open_a_study(http: httpx.Client, studies: Studies,
                                                 origin: RunningOrigin) -> None:
    query = f"/studies?limit=101&offset=0&fuzzymatching=false&{OHIF_STUDY_FIELDS}"
    for _ in range(2):  # OHIF sends it twice
        (study,) = search(http, f"{query}&StudyInstanceUID={studies.a}")
    for tag in ("0020000D", "00080020", "00080030", "00080050", "00100010", "00100020",
                "00100030", "00100040", "00081030", "00080090", "00080061", "00201206",
                "00201208"):
        assert tag in study, tag
    assert value(study, "00100010") == "ROE^MARY"
    assert study["00080061"]["Value"] == ["MG", "OT"]
    assert (value(study, "00201206"), value(study, "00201208")) == (2, 3)
    assert value(study, "00081190") == f"{origin.root}/studies/{studies.a}"
    assert "00080060" not in study  # Modality is a series attribute

    series = search(http, f"/studies/{studies.a}/series?{OHIF_SERIES_FIELDS}")
    assert [value(s, SERIES_UID) for s in series] == [studies.a_mg, studies.a_ot]  # by number
    for entry in series:
        for tag in ("0020000E", "00080060", "00200011", "0008103E", "0020000D", "00080021",
                    "00080031", "00201209"):
            assert tag in entry, tag
    assert [value(s, "00201209") for s in series] == [2, 1]
    assert value(series[1], "0008103E") == "Key images"
    mg_url = f"{origin.root}/studies/{studies.a}/series/{studies.a_mg}"
    assert value(series[0], "00081190") == mg_url

    others = search(http, f"{query}&00100020=P1")  # the patient's other studies
    assert [value(s, STUDY_UID) for s in others] == [studies.a, studies.c]  # newest first


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=roe*", "ac"),
        ("PatientName=*JANE", "b"),
        ("PatientName=ROE^MARY", "ac"),
        ("PatientID=P2", "b"),
        ("StudyDate=20240101-20240131", "a"),
        ("StudyDate=20240101-", "ba"),
        ("StudyDate=-20231231", "c"),
        ("ModalitiesInStudy=OT", "a"),
        ("ModalitiesInStudy=CT%5COT", "ba"),
        ("AccessionNumber=C-3", "c"),
        ("AccessionNumber=*-2", "b"),
        ("StudyInstanceUID={b},{c}", "bc"),
        ("PatientName=NOBODY", ""),
        ("limit=1&offset=1", "a"),
        ("PatientID=P1&limit=1", "a"),
    ],
)
def test_study_matching(http: httpx.Client, studies: Studies, query: str, expected: str) -> None:
    found = search(http, "/studies?" + query.format(b=studies.b, c=studies.c))
    names = {studies.a: "a", studies.b: "b", studies.c: "c"}
    assert "".join(names[str(value(s, STUDY_UID))] for s in found) == expected


def test_no_match_is_200_and_an_empty_array(http: httpx.Client) -> None:
    answer = http.get("/studies?PatientID=NOBODY")
    assert (answer.status_code, answer.content) == (200, b"[]")
    assert http.get(f"/studies/{generate_uid()}/series").json() == []


def test_series_and_instance_searches(http: httpx.Client, studies: Studies,
                                      origin: RunningOrigin) -> None:
    mg = search(http, f"/studies/{studies.a}/series?Modality=MG")
    assert [value(s, SERIES_UID) for s in mg] == [studies.a_mg]
    everywhere = search(http, "/series?Modality=MG&PatientID=P1")
    assert {value(s, STUDY_UID) for s in everywhere} == {studies.a, studies.c}
    assert all("00100010" in s for s in everywhere)  # outside a study: the study's too

    instances = search(http, f"/studies/{studies.a}/series/{studies.a_mg}/instances")
    assert [value(i, SOP_UID) for i in instances] == studies.a_mg_sops[::-1]  # by number
    first = instances[0]
    assert value(first, "00280008") == 2 and value(first, "00280010") == 16
    assert value(first, "00081190") == (
        f"{origin.root}/studies/{studies.a}/series/{studies.a_mg}/instances/{value(first, SOP_UID)}"
    )
    assert "7FE00010" not in first
    in_study = search(http, f"/studies/{studies.a}/instances?Modality=OT")
    assert [value(i, SERIES_UID) for i in in_study] == [studies.a_ot]
    by_uid = search(http, f"/instances?SOPInstanceUID={studies.a_mg_sops[0]}")
    assert [value(i, SOP_UID) for i in by_uid] == [studies.a_mg_sops[0]]
    everything = search(http, f"/studies/{studies.a}/series/{studies.a_mg}/instances"
                              "?includefield=all")
    assert "00185101" in everything[0]  # ViewPosition: any attribute of the instance


def test_dicomweb_client_searches(origin: RunningOrigin, studies: Studies) -> None:
    client = DICOMwebClient(url=origin.root)
    found = client.search_for_studies(search_filters={"PatientName": "ROE*"})
    assert {value(s, STUDY_UID) for s in found} == {studies.a, studies.c}
    series = client.search_for_series(study_instance_uid=studies.a)
    assert len(series) == 2
    instances = client.search_for_instances(
        study_instance_uid=studies.a, series_instance_uid=studies.a_mg, fields=["all"]
    )
    assert {value(i, SOP_UID) for i in instances} == set(studies.a_mg_sops)


def test_bad_searches_are_refused(http: httpx.Client) -> None:
    assert http.get("/studies?limit=many").status_code == 400
    assert http.get("/studies/not-a-uid/series").status_code == 400
    refused = http.get("/studies", headers={"Accept": "application/dicom+xml"})
    assert refused.status_code == 406
    warned = http.get("/studies?SOPClassUID=1.2&PatientID=P2")
    assert warned.status_code == 200 and len(warned.json()) == 1
    assert warned.headers["warning"].startswith("299 ") and "SOPClassUID" in warned.headers[
        "warning"
    ]


class OneStudyScope:
    """Stands in for an authentication middleware: this request may open one study."""

    def __init__(self, app: ASGIApp, layout: KeyLayout, study: str) -> None:
        self.app, self.scope = app, ReadScope((layout,), frozenset({study}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SCOPE_KEY] = self.scope
        await self.app(scope, receive, send)


def test_searches_stay_inside_the_request_scope(module_settings: Settings,
                                                studies: Studies) -> None:
    layout = KeyLayout(module_settings.prefix)
    with run_origin(module_settings,
                    wrap=lambda app: OneStudyScope(app, layout, studies.c)) as running, \
            httpx.Client(base_url=running.root, headers={"Accept": JSON}) as http:
        assert [value(s, STUDY_UID) for s in search(http, "/studies?PatientID=P1")] == [
            studies.c
        ]
        assert search(http, f"/studies?StudyInstanceUID={studies.a}") == []
        hidden = http.get(f"/studies/{studies.a}/series")
        missing = http.get(f"/studies/{generate_uid()}/series")
        assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content)
        assert search(http, "/series?PatientID=P1") != []
        assert {value(s, STUDY_UID) for s in search(http, "/series")} == {studies.c}


def test_concurrent_ingests_of_one_study_are_all_found(settings: Settings, tmp_path: Path) -> None:
    """Eight instances of one study ingested at once, across two series: every one counted."""
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    paths = [
        small_instance(tmp_path / f"{n}.dcm", study=study, series=series[n % 2],
                       PatientID="CONC")
        for n in range(8)
    ]
    threads = [threading.Thread(target=ingest_file, args=(p, settings)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with run_origin(settings) as running, httpx.Client(base_url=running.root) as http:
        (found,) = search(http, "/studies?PatientID=CONC")
        assert (value(found, "00201206"), value(found, "00201208")) == (2, 8)
        counts = [value(s, "00201209") for s in search(http, f"/studies/{study}/series")]
        assert counts == [4, 4]


def test_an_evicted_study_leaves_the_search(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(qido_study_cache_seconds=0.0)
    study = generate_uid()
    ingest_file(small_instance(tmp_path / "x.dcm", study=study, PatientID="GONE"), settings)
    with run_origin(settings) as running, httpx.Client(base_url=running.root) as http:
        assert len(search(http, "/studies?PatientID=GONE")) == 1
        bucket = Bucket.from_settings(settings)
        layout = KeyLayout(settings.prefix)
        bucket.delete([obj.key for obj in bucket.list(layout.study_prefix(study))])
        assert search(http, "/studies?PatientID=GONE") == []
        assert search(http, f"/studies?StudyInstanceUID={study}") == []


def test_searches_through_the_shipped_nginx_are_never_cached(
    origin: RunningOrigin, module_settings: Settings, studies: Studies, tmp_path: Path
) -> None:
    binary = nginx_binary_or_none()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; CI is set, so this is a failure")
        pytest.skip("nginx is not installed")
    with run_nginx(binary, tmp_path, origin.base, module_settings) as nginx, \
            httpx.Client(base_url=nginx.root, headers={"Accept": JSON}) as http:
        for path in ("/studies?PatientID=P1", f"/studies/{studies.a}/series",
                     f"/studies/{studies.a}/series/{studies.a_mg}/instances", "/series"):
            answers = [http.get(path) for _ in range(3)]
            assert all(a.status_code == 200 for a in answers)
            assert [a.headers.get("x-cache-status", "") for a in answers] == [""] * 3, path
            assert answers[0].json() == answers[2].json()
        metadata = f"/studies/{studies.a}/series/{studies.a_mg}/metadata"
        cached = [http.get(metadata).headers.get("x-cache-status") for _ in range(2)]
        assert cached == ["MISS", "HIT"]  # the rules for everything else stand
