"""No spurious 504 after the origin sits idle longer than the S3 read timeout.

aiohttp 3.14 can leave its ``sock_read`` timer armed on a connection it has put back
into the pool (origin/storage.py explains the path); ``read_timeout`` seconds later
the idle connection is poisoned and the next frame or metadata request on it answers
504 at once. The path is taken when a whole response body arrives while nobody reads
it and the last bytes push aiohttp's buffer past its high-water mark (twice
``READ_BUFFER_BYTES``): the parser pauses just before the end of the message. Frames
a little larger than that mark, prefetched by a multipart answer or sent to a client
that reads slowly, do exactly that.

Real uvicorn, real SeaweedFS, a short read timeout, several idle periods.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.origin.storage import READ_BUFFER_BYTES
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, ingest, run_origin

READ_TIMEOUT = 1.0
IDLE = 1.6 * READ_TIMEOUT
ROUNDS = 6
COLUMNS = 1024
#: 16-bit frames just over the high-water mark of aiohttp's per-response buffer.
ROWS = 2 * READ_BUFFER_BYTES // (COLUMNS * 2) + 1
SINGLE = {"Accept": "application/octet-stream"}


@pytest.fixture(scope="module")
def module_settings(s3_store: EmbeddedS3) -> Settings:
    return s3_store.settings(
        prefix=f"idle-{uuid.uuid4().hex[:10]}",
        s3_read_timeout=READ_TIMEOUT,
        # Short caches: after each idle period the index and metadata come from S3 again.
        index_cache_seconds=READ_TIMEOUT / 2,
        metadata_cache_seconds=READ_TIMEOUT / 2,
        metadata_listing_seconds=READ_TIMEOUT / 2,
    )


@pytest.fixture(scope="module")
def instance(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    path = tmp_path_factory.mktemp("idle") / "tomo.dcm"
    write_tomosynthesis(path, frames=4, rows=ROWS, columns=COLUMNS, seed=5)
    return ingest(path, module_settings)


def multipart_frames(response: httpx.Response) -> list[bytes]:
    """The parts' bodies (the origin's boundary never occurs inside a part)."""
    boundary = b"--" + response.headers["content-type"].split("boundary=")[1].encode()
    parts = response.content.split(boundary)[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for part in parts]


def read_slowly(http: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    """A viewer that pauses before reading: the origin's S3 bodies arrive unread."""
    with http.stream("GET", url, headers=headers) as response:
        time.sleep(0.2)
        response.read()
    return response


def test_no_504_after_idling_past_the_read_timeout(
    module_settings: Settings, instance: Expected
) -> None:
    assert len(instance.frames[0]) > 2 * READ_BUFFER_BYTES
    failures: list[str] = []

    def check(round_number: int, what: str, answer: httpx.Response) -> bool:
        if answer.status_code == 200:
            return True
        failures.append(f"round {round_number}: {what} answered {answer.status_code}")
        return False

    with run_origin(module_settings) as served, httpx.Client(timeout=30) as http:
        metadata = [
            f"{served.root}/studies/{instance.study}/metadata",
            f"{served.instance_url(instance)}/metadata",
        ]
        for round_number in range(ROUNDS):
            streamed = read_slowly(http, served.frames_url(instance, "1,2,3,4"), {})
            if check(round_number, "multipart 1-4", streamed):
                assert multipart_frames(streamed) == instance.frames
            single = read_slowly(http, served.frames_url(instance, "3"), SINGLE)
            if check(round_number, "frame 3", single):
                assert single.content == instance.frames[2]

            time.sleep(IDLE)  # a radiologist between two studies

            for url in metadata:
                check(round_number, url.removeprefix(served.root), http.get(url))
            for frames, headers in (("2", SINGLE), ("4,1", {})):
                url = served.frames_url(instance, frames)
                check(round_number, f"frames {frames}", http.get(url, headers=headers))
    assert failures == []
