"""When the upstream fails, or is asked for what it must not give: real Orthanc, real origin.

Upstream down: 502 with the origin's opaque body, while what the bucket holds is still
served. Upstream too slow: 504. Orthanc cutting a proxied body mid-stream: the client
sees a cut body, never a complete answer with a short body. The client's credentials
stay with the origin unless configured; framecdn's own go upstream. A path that could
leave the DICOMweb root is refused before anything is sent, and the query string goes
upstream exactly as given. Out-of-scope studies answer like missing ones.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from starlette.types import ASGIApp, Receive, Scope, Send

from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.origin.scope import SCOPE_KEY, ReadScope
from tests.origin_fixtures import free_port, hung_server, run_origin
from tests.orthanc_fixtures import RelayProxy
from tests.upstream_fixtures import (
    JSON,
    OHIF_FRAMES,
    Upstream,
    first_part,
    metric,
    populated_orthanc,
    upstream_settings,
)

PART10 = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Frames of 128 KiB, so that a cut lands inside a frame's bytes."""
    with populated_orthanc(
        tmp_path_factory.mktemp("faults-data"), tmp_path_factory.mktemp("orthanc"),
        frames=2, rows=256, columns=256,
    ) as populated:
        yield populated


@pytest.fixture
def relay(upstream: Upstream) -> Iterator[RelayProxy]:
    with RelayProxy(upstream.orthanc.http_port) as proxy:
        yield proxy


def opaque(answer: httpx.Response, status: int, *private: str) -> None:
    """An error answer that says nothing about the inside (only a request id)."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"status", "error", "request_id"}
    assert answer.headers["x-request-id"] == body["request_id"]
    for text in private:
        assert text not in answer.text and all(text not in v for v in answer.headers.values())


def test_upstream_down_is_502_and_the_bucket_is_still_served(
    settings: Settings, upstream: Upstream
) -> None:
    held, other = upstream.instances[0], upstream.instances[2]
    ingest_file(held.path, settings)
    down = f"127.0.0.1:{free_port()}"
    with run_origin(upstream_settings(settings, upstream.orthanc,
                                      root=f"http://{down}/dicom-web")) as origin, \
            httpx.Client(base_url=origin.root, timeout=30) as http:
        opaque(http.get("/studies?PatientID=UP1", headers={"Accept": JSON}), 502, down)
        opaque(http.get(f"{other.path_below_root}/frames/1", headers={"Accept": OHIF_FRAMES}),
               502, down)
        opaque(http.get(f"/studies/{other.key.study}/series/{other.key.series}/metadata",
                        headers={"Accept": JSON}), 502, down)
        opaque(http.get(f"/studies/{other.key.study}", headers={"Accept": PART10}), 502, down)
        # What the bucket holds is still served, byte for byte.
        frame = http.get(f"{held.path_below_root}/frames/2", headers={"Accept": OHIF_FRAMES})
        assert frame.status_code == 200 and first_part(frame) == held.frames[1]
        metadata = http.get(f"/studies/{held.key.study}/series/{held.key.series}/metadata",
                            headers={"Accept": JSON})
        assert metadata.status_code == 200 and len(metadata.json()) == 1
        assert metric(origin, "framecdn_upstream_requests", status="unavailable") >= 4


def test_a_hung_upstream_is_504(settings: Settings, upstream: Upstream) -> None:
    with hung_server() as url, run_origin(upstream_settings(
        settings, upstream.orthanc, root=f"{url}/dicom-web", upstream_read_timeout=1.0
    )) as origin:
        answer = httpx.get(f"{origin.root}/studies", headers={"Accept": JSON}, timeout=30)
        opaque(answer, 504, url.removeprefix("http://"))
        assert answer.json()["error"] == "upstream timeout"


@pytest.mark.parametrize(
    ("target", "accept", "after_bytes"),
    [
        ("frames/1", OHIF_FRAMES, 40_000),  # multipart, rewritten: chunked, cut
        ("rendered", "image/jpeg", 600),  # passed as it is: Content-Length, cut
        ("metadata", JSON, 1_500),  # JSON, rewritten element by element
    ],
)
def test_a_body_the_upstream_cuts_is_cut_for_the_client(
    settings: Settings, upstream: Upstream, relay: RelayProxy, target: str, accept: str,
    after_bytes: int,
) -> None:
    instance = upstream.instances[0]
    with run_origin(upstream_settings(settings, upstream.orthanc,
                                      root=f"{relay.url}/dicom-web")) as origin:
        url = f"{origin.root}{instance.path_below_root}/{target}"
        whole = httpx.get(url, headers={"Accept": accept}, timeout=30)
        assert whole.status_code == 200 and len(whole.content) > after_bytes
        relay.cut(f"/{target}$", after_bytes=after_bytes)
        with pytest.raises(httpx.RemoteProtocolError):  # incomplete body: never a whole one
            httpx.get(url, headers={"Accept": accept}, timeout=30)
        assert metric(origin, "framecdn_aborted_streams") == 1


class Scoped:
    """Stands in for an authentication middleware: sets one ReadScope on every request."""

    def __init__(self, app: ASGIApp, scope: ReadScope) -> None:
        self.app, self.scope = app, scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SCOPE_KEY] = self.scope
        await self.app(scope, receive, send)


def test_out_of_scope_studies_answer_like_missing_ones(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    """A second study in Orthanc that the request may not open: it is not searched, not
    retrieved, not read through; its answers are those of a study that does not exist."""
    from tests.dicom_factory import small_instance

    hidden_path = small_instance(tmp_path / "hidden.dcm", PatientID="UP1")
    upstream.orthanc.upload(hidden_path)
    import pydicom

    hidden = pydicom.dcmread(hidden_path, stop_before_pixels=True)
    nowhere = generate_uid()
    scope = ReadScope((KeyLayout(settings.prefix),), frozenset({upstream.study}))
    with run_origin(upstream_settings(settings, upstream.orthanc),
                    wrap=lambda app: Scoped(app, scope)) as origin, \
            httpx.Client(base_url=origin.root, timeout=30) as http:
        found = http.get("/studies?PatientID=UP1", headers={"Accept": JSON}).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [upstream.study]
        everywhere = http.get("/series", headers={"Accept": JSON}).json()
        assert {s["0020000D"]["Value"][0] for s in everywhere} == {upstream.study}
        for path, accept in [
            ("/studies/{study}", PART10),
            ("/studies/{study}/series/{series}/metadata", JSON),
            ("/studies/{study}/series/{series}/instances/{sop}/frames/1", OHIF_FRAMES),
            ("/studies/{study}/series/{series}/instances/{sop}/rendered", "image/jpeg"),
            ("/studies/{study}/series", JSON),
        ]:
            out = http.get(path.format(study=hidden.StudyInstanceUID,
                                       series=hidden.SeriesInstanceUID,
                                       sop=hidden.SOPInstanceUID), headers={"Accept": accept})
            missing = http.get(path.format(study=nowhere, series=generate_uid(),
                                           sop=generate_uid()), headers={"Accept": accept})
            assert (out.status_code, out.content) == (missing.status_code, missing.content), path
        assert http.get("/instances", headers={"Accept": JSON}).status_code == 200
        allowed = http.get(f"{upstream.instances[0].path_below_root}/frames/1",
                           headers={"Accept": OHIF_FRAMES})
        assert allowed.status_code == 200


def test_client_credentials_stay_with_the_origin_unless_configured(
    settings: Settings, upstream: Upstream
) -> None:
    orthanc = upstream.orthanc
    import base64

    theirs = "Basic " + base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    bogus = {"Accept": JSON, "Authorization": "Basic Ym9ndXM6Ym9ndXM=", "Cookie": "session=x"}
    path = f"/studies/{upstream.study}/series"
    no_credentials = settings.with_overrides(upstream_url=orthanc.dicomweb_root)
    with run_origin(no_credentials) as origin:
        # The client holds Orthanc's own credentials: they are not passed on, so Orthanc
        # refuses the origin, and the client gets the origin's opaque 502.
        answer = httpx.get(origin.root + path, headers={"Accept": JSON, "Authorization": theirs})
        opaque(answer, 502, upstream.host_port)
        assert answer.json()["error"] == "upstream refused framecdn's credentials"
    with run_origin(upstream_settings(settings, orthanc)) as origin:
        answer = httpx.get(origin.root + path, headers=bogus)  # ours go, theirs do not
        assert answer.status_code == 200 and len(answer.json()) == 2
    forwarding = no_credentials.with_overrides(upstream_forward_auth=True)
    with run_origin(forwarding) as origin:
        answer = httpx.get(origin.root + path, headers={"Accept": JSON, "Authorization": theirs})
        assert answer.status_code == 200
        refused = httpx.get(origin.root + path, headers=bogus)
        assert refused.status_code == 401 and upstream.host_port not in refused.text


def test_credentials_from_a_file(settings: Settings, upstream: Upstream, tmp_path: Path) -> None:
    orthanc = upstream.orthanc
    secret = tmp_path / "upstream-credentials"
    secret.write_text(f"{orthanc.username}:{orthanc.password}\n")
    configured = settings.with_overrides(
        upstream_url=orthanc.dicomweb_root, upstream_credentials_file=str(secret)
    )
    with run_origin(configured) as origin:
        answer = httpx.get(f"{origin.root}/studies/{upstream.study}/series",
                           headers={"Accept": JSON})
        assert answer.status_code == 200


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """A GET whose request target is sent exactly as written (clients normalise ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "target",
    [
        "/dicom-web/studies/../../system",
        "/dicom-web/studies/%2e%2e/%2E%2E/system",
        "/dicom-web/studies/1.2/..%2f..%2fsystem",
        "/dicom-web//system",
        "/dicom-web/studies/./../instances",
    ],
)
def test_paths_that_could_leave_the_root_are_refused_before_sending(
    settings: Settings, upstream: Upstream, relay: RelayProxy, target: str
) -> None:
    with run_origin(upstream_settings(settings, upstream.orthanc,
                                      root=f"{relay.url}/dicom-web")) as origin:
        status, body = raw_get(origin.base, target)
        assert status in (400, 404), body
        assert relay.count(r".") == 0, dict(relay.paths)
        assert b"system" not in body or status == 400


def test_the_query_string_goes_upstream_exactly_as_given(
    settings: Settings, upstream: Upstream, relay: RelayProxy
) -> None:
    query = ("PatientID=UP1&includefield=00081030%2C00080060&x=%40evil.example%2F&"
             "next=http://evil.example/&limit=5")
    with run_origin(upstream_settings(settings, upstream.orthanc,
                                      root=f"{relay.url}/dicom-web")) as origin:
        status, _ = raw_get(origin.base, f"/dicom-web/studies?{query}")
        assert status == 200
        assert dict(relay.paths) == {f"/dicom-web/studies?{query}": 1}
