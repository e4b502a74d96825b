"""Delivery modes and failure behaviour of the origin, over real HTTP and real S3.

Redirect URLs are fetched from SeaweedFS with signature checking on; S3 outages are
real (a closed port, a socket that never answers); eviction is a real delete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, free_port, hung_server, ingest, run_origin

SINGLE = {"Accept": "application/octet-stream"}
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


@pytest.fixture(scope="module")
def big(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """Frames of 2 MiB: big enough that a stream is still running when we hang up."""
    path = tmp_path_factory.mktemp("delivery") / "big.dcm"
    # 24 x 2 MiB: more than loopback socket buffers hold, so a stalled reader stalls the origin.
    write_tomosynthesis(path, frames=24, rows=1024, columns=1024, seed=7)
    return ingest(path, module_settings)


def frames_url(root: str, inst: Expected, frames: str) -> str:
    return f"{root}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/frames/{frames}"


def test_redirect_mode_presigned_url_is_checked_stable_and_correct(
    module_settings: Settings, big: Expected
) -> None:
    settings = module_settings.with_overrides(delivery="redirect", presign_window_seconds=600)
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        url = frames_url(served.root, big, "2")
        first = http.get(url, headers=SINGLE)
        assert first.status_code == 307
        location = first.headers["location"]
        assert location.startswith(settings.s3_endpoint)
        assert "X-Amz-Signature=" in location
        max_age = int(first.headers["cache-control"].split("max-age=")[1])
        assert 0 < max_age <= 600
        # Identical within the signing window (CDN-cacheable).
        assert http.get(url, headers=SINGLE).headers["location"] == location
        # The URL fetches the right bytes from S3, which checks the signature...
        fetched = httpx.get(location, timeout=30)
        assert fetched.status_code == 200
        assert fetched.content == big.frames[1]
        assert fetched.headers["content-type"].startswith("application/octet-stream")
        # ...as a tampered one shows.
        tampered = location.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert httpx.get(tampered, timeout=30).status_code == 403
        # Multipart requests and frame lists still stream.
        multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
        assert multi.status_code == 200 and big.frames[1] in multi.content
        assert http.get(frames_url(served.root, big, "1,2")).status_code == 200
        metrics = http.get(f"{served.base}/metrics").text
        assert 'mode="redirect",route="frames",status="307"' in metrics


def test_accel_mode_hands_nginx_a_signed_internal_path(
    module_settings: Settings, big: Expected
) -> None:
    settings = module_settings.with_overrides(delivery="accel")
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        response = http.get(frames_url(served.root, big, "3"), headers=SINGLE)
        assert response.status_code == 200
        assert response.content == b""
        target = response.headers["x-accel-redirect"]
        assert target.startswith("/_framecdn_s3/")
        assert response.headers["content-type"] == (
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        )
        assert response.headers["etag"]
        # What nginx's `proxy_pass http://<s3>/;` in the internal location would fetch:
        s3_url = settings.s3_endpoint + "/" + target.removeprefix("/_framecdn_s3/")
        fetched = httpx.get(s3_url, timeout=30)
        assert fetched.status_code == 200 and fetched.content == big.frames[2]


def test_s3_unreachable_is_503_with_retry_after(module_settings: Settings, big: Expected) -> None:
    dead = module_settings.with_overrides(
        s3_endpoint=f"http://127.0.0.1:{free_port()}", s3_connect_timeout=1.0
    )
    with run_origin(dead) as served, httpx.Client(timeout=30) as http:
        started = time.monotonic()
        response = http.get(frames_url(served.root, big, "1"))
        assert response.status_code == 503
        assert response.headers["retry-after"]
        ready = http.get(f"{served.base}/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert http.get(f"{served.base}/healthz").status_code == 200
        assert time.monotonic() - started < 10


@pytest.fixture
def black_hole() -> Iterator[str]:
    with hung_server() as url:
        yield url


def test_s3_hanging_is_504_within_the_read_timeout(
    module_settings: Settings, big: Expected, black_hole: str
) -> None:
    slow = module_settings.with_overrides(s3_endpoint=black_hole, s3_read_timeout=1.0)
    with run_origin(slow) as served, httpx.Client(timeout=30) as http:
        started = time.monotonic()
        response = http.get(frames_url(served.root, big, "1"))
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.headers["retry-after"]
        assert elapsed < 5  # bounded: read timeout (plus one retry of the connect at most)
        metrics = http.get(f"{served.base}/metrics").text
        assert 'framecdn_s3_errors_total{kind="timeout"}' in metrics


def test_half_evicted_instance(module_settings: Settings, tmp_path, s3_client) -> None:
    path = tmp_path / "evicted.dcm"
    write_tomosynthesis(path, frames=4, rows=512, columns=512, seed=11)
    inst = ingest(path, module_settings)
    layout = KeyLayout(module_settings.prefix)
    with run_origin(module_settings) as served, httpx.Client(timeout=30) as http:
        assert http.get(frames_url(served.root, inst, "1,2,3,4")).status_code == 200  # index cached
        s3_client.delete_object(Bucket=module_settings.bucket, Key=layout.frame_of(inst.index, 3))
        # A list whose third part is gone: the body is cut, never completed.
        with pytest.raises(httpx.RemoteProtocolError):  # the transport sees a short body
            http.get(frames_url(served.root, inst, "1,2,3,4"))
        # From then on the whole instance is absent, although its index is still in the
        # bucket and frames 1, 2 and 4 still exist: the stale index is ignored.
        for frames in ("3", "1", "4", "1,2"):
            headers = SINGLE if "," not in frames else {}
            answer = http.get(frames_url(served.root, inst, frames), headers=headers)
            assert answer.status_code == 404, frames
        metadata_url = frames_url(served.root, inst, "1").replace("/frames/1", "/metadata")
        assert http.get(metadata_url).status_code == 404
        assert layout.index(inst.index.key) in [
            o["Key"] for o in s3_client.list_objects_v2(
                Bucket=module_settings.bucket, Prefix=layout.instance_prefix(inst.index.key)
            )["Contents"]
        ]
        # Ingesting the instance again (a new index) makes it whole and served at once.
        ingest_file(path, module_settings, force=True)
        response = http.get(frames_url(served.root, inst, "3"), headers=SINGLE)
        assert response.status_code == 200 and response.content == inst.frames[2]


def _active_s3_connections(served) -> int:
    return served.origin.store.active_streams


def test_client_disconnect_releases_the_s3_connection(
    module_settings: Settings, big: Expected
) -> None:
    with run_origin(module_settings) as served:
        url = frames_url(served.root, big, ",".join(str(n) for n in range(1, 25)))
        with httpx.Client(timeout=30) as http, http.stream("GET", url) as response:
            assert response.status_code == 200
            iterator = response.iter_raw(65536)
            next(iterator)
            # Mid-stream the origin holds S3 streams (between two frames, for a moment,
            # only a prefetch still opening: so look for a little while).
            deadline = time.monotonic() + 5
            while not _active_s3_connections(served) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _active_s3_connections(served) >= 1
            # Leaving the block without reading the body closes our connection.
        deadline = time.monotonic() + 10
        while _active_s3_connections(served) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _active_s3_connections(served) == 0


class BodyWrites:
    """ASGI wrapper: the size of every body message the origin hands the server, per path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sizes: dict[str, list[int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sizes = self.sizes.setdefault(scope["path"], [])

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                sizes.append(len(message["body"]))
            await send(message)

        await self.app(scope, receive, recording_send)


def test_streaming_is_chunked_not_buffered(module_settings: Settings, big: Expected) -> None:
    """The origin writes each 2 MiB frame in chunk-sized pieces, never a frame at once."""
    writes: list[BodyWrites] = []

    def watch(app: ASGIApp) -> ASGIApp:
        writes.append(BodyWrites(app))
        return writes[0]

    chunk = module_settings.stream_chunk_bytes
    with run_origin(module_settings, wrap=watch) as served, httpx.Client(timeout=30) as http:
        multi = http.get(frames_url(served.root, big, "1,2,3,4,5,6"))
        single = http.get(frames_url(served.root, big, "7"), headers=SINGLE)
    assert multi.status_code == 200 and single.status_code == 200
    assert single.content == big.frames[6]
    multi_writes = writes[0].sizes[urlsplit(str(multi.url)).path]
    single_writes = writes[0].sizes[urlsplit(str(single.url)).path]
    assert sum(multi_writes) == len(multi.content)
    assert sum(single_writes) == len(big.frames[6])
    part_head = 512  # boundary, Content-Type and Content-Location of one part
    assert max(multi_writes) <= chunk + part_head
    assert max(single_writes) <= chunk
    assert len(multi_writes) >= sum(len(f) for f in big.frames[:6]) // chunk
    assert len(single_writes) >= len(big.frames[6]) // chunk
