"""Read-through fill: one fill per instance however many ask, nothing visible from a failed one,
and ``framecdn serve`` running its own fill service. Real Orthanc, SeaweedFS, uvicorn.

The relay between framecdn and Orthanc counts Orthanc's answers by path, so "one fill"
is counted where it costs: whole-instance downloads from the upstream.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid
from starlette.types import ASGIApp, Receive, Scope, Send

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.fill_protocol import FillRequest, InvalidFillRequest
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest.dicomweb_source import FirstPart, IncompleteInstance
from framecdn.origin.scope import SCOPE_KEY, ReadScope
from tests.origin_fixtures import free_port, run_origin
from tests.orthanc_fixtures import RelayProxy
from tests.processes import running
from tests.upstream_fixtures import (
    JSON,
    OHIF_FRAMES,
    Instance,
    Upstream,
    first_part,
    metric,
    populated_orthanc,
    running_fill,
    upstream_settings,
    wait_for_metric,
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with populated_orthanc(
        tmp_path_factory.mktemp("fill-data"), tmp_path_factory.mktemp("orthanc"),
        frames=4, rows=128, columns=128,
    ) as populated:
        yield populated


@pytest.fixture
def relay(upstream: Upstream) -> Iterator[RelayProxy]:
    with RelayProxy(upstream.orthanc.http_port) as proxy:
        yield proxy


def downloads(relay: RelayProxy, instance: Instance) -> int:
    """Whole-instance GETs of ``instance`` that reached Orthanc."""
    return relay.count(f"/instances/{instance.key.instance}$")


def stored_keys(settings: Settings, instance: Instance) -> list[str]:
    prefix = KeyLayout(settings.prefix).instance_prefix(instance.key)
    return [o.key for o in Bucket.from_settings(settings).list(prefix)]


def test_one_fill_per_instance_however_many_ask(
    settings: Settings, upstream: Upstream, relay: RelayProxy
) -> None:
    """Two origin processes' worth of requests at once: series metadata and every frame,
    several times each. Each instance is downloaded once, and then served from the bucket."""
    through_relay = upstream_settings(settings, upstream.orthanc, root=f"{relay.url}/dicom-web")
    series = upstream.instances[0].key.series
    held = [i for i in upstream.instances if i.key.series == series]
    with running_fill(through_relay) as fill, \
            run_origin(through_relay.with_overrides(fill_url=fill.url)) as one, \
            run_origin(through_relay.with_overrides(fill_url=fill.url)) as two:
        urls = []
        for origin in (one, two):
            urls += [(f"{origin.root}/studies/{upstream.study}/series/{series}/metadata", JSON)]
            for instance in held:
                for number in range(1, len(instance.frames) + 1):
                    url = f"{origin.root}{instance.path_below_root}/frames/{number}"
                    urls += [(url, OHIF_FRAMES)] * 3

        def get(item: tuple[str, str]) -> int:
            return httpx.get(item[0], headers={"Accept": item[1]}, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(get, urls)) == {200}
        for origin in (one, two):
            wait_for_metric(origin, "framecdn_fill_requests", 2, result="queued")
        fill.wait_idle()
        assert [downloads(relay, i) for i in held] == [1, 1]
        assert fill.filler.status()["ingested"] == 2
        asked = sum(metric(o, "framecdn_fill_requests", result="queued") for o in (one, two))
        assert 2 <= asked <= 4  # each process asks once per instance; the service dedupes
        served = httpx.get(f"{one.root}{held[0].path_below_root}/frames/4",
                           headers={"Accept": OHIF_FRAMES})
        assert first_part(served) == held[0].frames[3]
        frames_upstream = metric(one, "framecdn_upstream_requests", route="frames")
        httpx.get(f"{one.root}{held[1].path_below_root}/frames/1", headers={"Accept": OHIF_FRAMES})
        assert metric(one, "framecdn_upstream_requests", route="frames") == frames_upstream


def test_the_fill_service_takes_an_instance_once_at_a_time(
    settings: Settings, upstream: Upstream, relay: RelayProxy
) -> None:
    through_relay = upstream_settings(settings, upstream.orthanc, root=f"{relay.url}/dicom-web")
    instance = upstream.instances[2]
    body = {"instances": [[instance.key.study, instance.key.series, instance.key.instance]]}
    with running_fill(through_relay) as fill, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: httpx.post(f"{fill.url}/fills", json=body).json(), range(20)
        ))
        fill.wait_idle()
        assert sum(a["queued"] for a in answers) + sum(a["duplicates"] for a in answers) == 20
        assert downloads(relay, instance) == 1
        again = httpx.post(f"{fill.url}/fills", json=body).json()
        fill.wait_idle()
        assert again["queued"] == 1 and downloads(relay, instance) == 1  # already there
        status = httpx.get(f"{fill.url}/fills").json()
        assert (status["ingested"], status["failed"], status["active"]) == (1, 0, 0)
        metrics = httpx.get(f"{fill.url}/metrics").text
        assert 'framecdn_fills_total{result="ingested"} 1.0' in metrics


def test_a_failed_fill_leaves_nothing_visible_and_the_next_miss_fills(
    settings: Settings, upstream: Upstream, relay: RelayProxy, caplog: pytest.LogCaptureFixture
) -> None:
    through_relay = upstream_settings(settings, upstream.orthanc, root=f"{relay.url}/dicom-web")
    instance = upstream.instances[1]
    relay.cut(f"/instances/{instance.key.instance}$", after_bytes=60_000)  # mid-file, once
    with running_fill(through_relay) as fill, \
            run_origin(through_relay.with_overrides(fill_url=fill.url)) as origin:
        url = f"{origin.root}{instance.path_below_root}/frames/2"
        answer = httpx.get(url, headers={"Accept": OHIF_FRAMES})
        assert answer.status_code == 200 and first_part(answer) == instance.frames[1]
        wait_for_metric(origin, "framecdn_fill_requests", 1, result="queued")
        fill.wait_idle()
        assert fill.filler.status()["failed"] == 1
        assert "closed the connection mid-answer" in caplog.text  # caught at the download
        assert stored_keys(settings, instance) == []  # no frame, no metadata, no index
        # The origin asks again only after a while; the service itself fills at once.
        key = instance.key
        httpx.post(f"{fill.url}/fills", json={"instances": [[key.study, key.series,
                                                              key.instance]]})
        fill.wait_idle()
        assert fill.filler.status()["ingested"] == 1
        # the frames, the metadata, the part10 object and the index
        assert len(stored_keys(settings, instance)) == len(instance.frames) + 3


def test_an_instance_the_upstream_lacks_fails_cleanly(
    settings: Settings, upstream: Upstream
) -> None:
    missing = InstanceKey(upstream.study, generate_uid(), generate_uid())
    with running_fill(upstream_settings(settings, upstream.orthanc)) as fill:
        httpx.post(f"{fill.url}/fills",
                   json={"instances": [[missing.study, missing.series, missing.instance]]})
        fill.wait_idle()
        assert fill.filler.status()["failed"] == 1
        layout = KeyLayout(settings.prefix)
        assert list(Bucket.from_settings(settings).list(layout.instance_prefix(missing))) == []
        bad = httpx.post(f"{fill.url}/fills", json={"instances": [["1.2", "x", "3"]]})
        assert bad.status_code == 400 and "not digits and dots" in bad.text
        assert httpx.post(f"{fill.url}/fills", content=b"{}").status_code == 400


# The multipart reader ----------------------------------------------------------------------

BOUNDARY = "b0undary-7"
PAYLOAD = bytes(range(256)) * 40 + b"\r\n--b0undar"  # a near-delimiter inside the payload


def multipart(payload: bytes, *, length: bool) -> bytes:
    head = b"Content-Type: application/dicom\r\n"
    if length:
        head += f"Content-Length: {len(payload)}\r\n".encode()
    return (b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n" + payload + b"\r\n--"
            + BOUNDARY.encode() + b"--\r\n")


@pytest.mark.parametrize("length", [True, False])
def test_first_part_is_read_whole_at_every_split(length: bool) -> None:
    body = multipart(PAYLOAD, length=length)
    for split in [*range(0, 80), *range(len(body) - 60, len(body) + 1), 5000]:
        out = io.BytesIO()
        part = FirstPart(BOUNDARY, out)
        part.feed(body[:split])
        part.feed(body[split:])
        assert part.complete and out.getvalue() == PAYLOAD, split


@pytest.mark.parametrize("length", [True, False])
def test_a_cut_part_is_not_complete(length: bool) -> None:
    body = multipart(PAYLOAD, length=length)
    for cut in (10, 60, 3000, len(body) - len(BOUNDARY) - 8):
        part = FirstPart(BOUNDARY, io.BytesIO())
        part.feed(body[:cut])
        assert not part.complete, cut


def test_a_part_longer_than_it_says_is_refused() -> None:
    body = multipart(PAYLOAD, length=True).replace(
        f"Content-Length: {len(PAYLOAD)}".encode(), f"Content-Length: {len(PAYLOAD) - 5}".encode()
    )
    with pytest.raises(IncompleteInstance):
        FirstPart(BOUNDARY, io.BytesIO()).feed(body)


def test_fill_requests_are_checked() -> None:
    request = FillRequest.from_json(json.dumps({"instances": [["1.2", "3.4", "5.6"]]}).encode())
    assert request == FillRequest((InstanceKey("1.2", "3.4", "5.6"),), None)
    named = FillRequest.from_json(b'{"prefix": "site-a/", "instances": []}')
    assert named == FillRequest((), "site-a/")
    for bad in (b"[]", b'{"instances": "1.2"}', b'{"instances": [["1.2"]]}', b"not json",
                b'{"instances": [["1.2", "3.4", "../x"]]}', b'{"prefix": 3, "instances": []}'):
        with pytest.raises(InvalidFillRequest, match=r"instances|UID|prefix") as caught:
            FillRequest.from_json(bad)
        assert caught.value.status == 400


@pytest.mark.parametrize("prefix", [None, "site-a/"])
def test_what_the_origin_sends_is_what_the_service_reads(prefix: str | None) -> None:
    sent = FillRequest((InstanceKey("1.2", "3.4", "5.6"), InstanceKey("1.2", "3.4", "7")), prefix)
    assert FillRequest.from_json(json.dumps(sent.to_json()).encode()) == sent


# framecdn serve with an upstream ---------------------------------------------------------


def test_serve_starts_its_fill_service_and_stops_it(
    s3_store: EmbeddedS3, settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    instance = upstream.instances[2]
    port = free_port()
    env = {
        **os.environ, **s3_store.environment(),
        "FRAMECDN_PREFIX": settings.prefix, "FRAMECDN_PORT": str(port),
        "FRAMECDN_UPSTREAM_URL": upstream.orthanc.dicomweb_root,
        "FRAMECDN_UPSTREAM_USERNAME": upstream.orthanc.username,
        "FRAMECDN_UPSTREAM_PASSWORD": upstream.orthanc.password,
        "FRAMECDN_FILL_URL": "", "TMPDIR": str(tmp_path),
    }
    root = f"http://127.0.0.1:{port}/dicom-web"
    with running([sys.executable, "-m", "framecdn", "serve"], env=env) as serve:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, serve.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "framecdn serve did not start"
            time.sleep(0.2)
        children = psutil.Process(serve.pid).children(recursive=True)
        assert any("fill" in child.cmdline() for child in children), "no fill service"
        answer = httpx.get(f"{root}{instance.path_below_root}/frames/3",
                           headers={"Accept": OHIF_FRAMES}, timeout=30)
        assert answer.status_code == 200 and first_part(answer) == instance.frames[2]
        layout = KeyLayout(settings.prefix)
        bucket = Bucket.from_settings(settings)
        deadline = time.monotonic() + 60
        while bucket.get_or_none(layout.index(instance.key)) is None:
            assert time.monotonic() < deadline, "the instance was not filled"
            time.sleep(0.2)
        serve.terminate()
        serve.wait(60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [] and serve.returncode == 0


class Scoped:
    """Stands in for an authentication middleware: one ReadScope on every request."""

    def __init__(self, app: ASGIApp, scope: ReadScope) -> None:
        self.app, self.scope = app, scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SCOPE_KEY] = self.scope
        await self.app(scope, receive, send)


def test_a_fill_lands_under_the_first_layout_of_the_scope(
    settings: Settings, upstream: Upstream
) -> None:
    """With access control, the upstream's site is the scope's first layout (a prefix below
    the origin's): the fill goes there, and the next request finds it there. A prefix
    outside the fill service's own is refused."""
    instance = upstream.instances[0]
    site = KeyLayout(settings.prefix + "/site-a")
    scope = ReadScope((site, KeyLayout(settings.prefix + "/site-b")), upstream=True)
    with running_fill(upstream_settings(settings, upstream.orthanc)) as fill, run_origin(
        upstream_settings(settings, upstream.orthanc, fill_url=fill.url),
        wrap=lambda app: Scoped(app, scope),
    ) as origin:
        url = f"{origin.root}{instance.path_below_root}/frames/1"
        assert httpx.get(url, headers={"Accept": OHIF_FRAMES}).status_code == 200
        wait_for_metric(origin, "framecdn_fill_requests", 1, result="queued")
        fill.wait_idle()
        bucket = Bucket.from_settings(settings)
        assert bucket.get_or_none(site.index(instance.key)) is not None
        assert bucket.get_or_none(KeyLayout(settings.prefix).index(instance.key)) is None
        hits = metric(origin, "framecdn_instance_lookups", result="hit")
        answer = httpx.get(url, headers={"Accept": OHIF_FRAMES})
        assert first_part(answer) == instance.frames[0]
        assert metric(origin, "framecdn_instance_lookups", result="hit") == hits + 1
        outside = httpx.post(f"{fill.url}/fills", json={
            "prefix": "elsewhere/", "instances": [[instance.key.study, instance.key.series,
                                                   instance.key.instance]],
        })
        assert outside.status_code == 400 and "not below" in outside.text


def test_a_miss_the_upstream_refuses_to_answer_is_still_filled(
    settings: Settings, upstream: Upstream, relay: RelayProxy
) -> None:
    """A representation the upstream will not make (Orthanc's DICOMweb refuses a
    single-part frame) still queues the instance, once; one it lacks is not queued."""
    through_relay = upstream_settings(settings, upstream.orthanc, root=f"{relay.url}/dicom-web")
    instance = upstream.instances[2]
    single_part = {"Accept": "application/octet-stream"}
    with running_fill(through_relay) as fill, \
            run_origin(through_relay.with_overrides(fill_url=fill.url)) as origin:
        url = f"{origin.root}{instance.path_below_root}/frames/2"
        refused = [httpx.get(url, headers=single_part, timeout=60) for _ in range(3)]
        assert {r.status_code for r in refused} == {400}, [r.text for r in refused]
        wait_for_metric(origin, "framecdn_fill_requests", 1, result="queued")
        fill.wait_idle()
        assert fill.filler.status()["ingested"] == 1
        assert downloads(relay, instance) == 1
        assert metric(origin, "framecdn_fill_requests", result="queued") == 1  # de-duplicated
        served = httpx.get(url, headers=single_part)  # now from the bucket, as asked
        assert served.status_code == 200 and served.content == instance.frames[1]

        lacking = f"{origin.root}/studies/{upstream.study}/series/{instance.key.series}" \
                  f"/instances/{generate_uid()}/frames/1"
        assert httpx.get(lacking, headers=single_part).status_code == 404
        time.sleep(0.5)
        assert metric(origin, "framecdn_fill_requests", result="queued") == 1
