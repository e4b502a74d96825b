"""A store that stalls, dies or cuts a body mid-way: the origin answers 503/504 with
Retry-After within its timeouts, never ends a cut body as complete, condemns nothing,
and serves again by itself once the store is back.

Real SeaweedFS of the module's own (paused with SIGSTOP, killed with SIGKILL and
restarted on its data directory), real uvicorn, a real TCP proxy that cuts connections.
Only the store's own "no such key" may condemn an instance's index.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.s3 import make_client
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys
from tests.origin_fixtures import Expected, ingest, run_origin
from tests.processes import frozen_when, running
from tests.store_faults import CuttingProxy, own_store

READ_TIMEOUT = 1.5
CONNECT_TIMEOUT = 1.0
#: The longest a request may take when the store does not answer: connect, then read.
BOUND = CONNECT_TIMEOUT + READ_TIMEOUT + 3.0
OCTET = {"Accept": "application/octet-stream"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    with own_store(tmp_path_factory.mktemp("faulty-store")) as store:
        yield store


@pytest.fixture
def fault_settings(store: EmbeddedS3) -> Settings:
    """Short timeouts, one frame fetched at a time (the next opens after the last ends)."""
    return store.settings(
        prefix=f"f-{uuid.uuid4().hex[:10]}",
        s3_read_timeout=READ_TIMEOUT,
        s3_connect_timeout=CONNECT_TIMEOUT,
        frame_prefetch=1,
        retry_after_seconds=3,
    )


@pytest.fixture
def instance(fault_settings: Settings, tmp_path: Path) -> Expected:
    path = tmp_path / "tomo.dcm"
    write_tomosynthesis(path, frames=4, rows=64, columns=64, seed=11)
    return ingest(path, fault_settings)


class OnFirstBody:
    """ASGI wrapper: runs ``action`` once, when an armed response sends its first bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.action: Callable[[], None] | None = None

    def arm(self, action: Callable[[], None]) -> None:
        self.action = action

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watching(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                action, self.action = self.action, None
                if action is not None:
                    action()
            await send(message)

        await self.app(scope, receive, watching)


def read_cut(http: httpx.Client, url: str, headers: dict | None = None) -> tuple[int, int, int]:
    """(status, declared length, bytes received) of an answer expected to be cut short."""
    with http.stream("GET", url, headers=headers) as response:
        declared = int(response.headers["content-length"])
        received = 0
        try:
            for chunk in response.iter_raw():
                received += len(chunk)
        except httpx.RemoteProtocolError:  # the client saw the cut: a short body
            return response.status_code, declared, received
        raise AssertionError(f"{url} answered in full ({received} bytes)")


def assert_served(http: httpx.Client, served, inst: Expected) -> None:
    """Every frame byte-exact and the metadata: the instance was not condemned."""
    for number, expected in enumerate(inst.frames, start=1):
        response = http.get(
            served.frames_url(inst, str(number)), headers={"Accept": "application/octet-stream"}
        )
        assert response.status_code == 200, (number, response.text)
        assert response.content == expected
    metadata = http.get(f"{served.instance_url(inst)}/metadata")
    assert metadata.status_code == 200, metadata.text


def test_store_stalled_between_two_frames_condemns_nothing(
    store: EmbeddedS3, fault_settings: Settings, instance: Expected
) -> None:
    wrapper: OnFirstBody | None = None

    def wrap(app: ASGIApp) -> ASGIApp:
        nonlocal wrapper
        wrapper = OnFirstBody(app)
        return wrapper

    with run_origin(fault_settings, wrap=wrap) as served, httpx.Client(timeout=30) as http:
        assert wrapper is not None
        wrapper.arm(store.pause)  # frame 1 is out; frame 2 is asked of a frozen store
        try:
            started = time.monotonic()
            status, declared, received = read_cut(http, served.frames_url(instance, "1,2,3,4"))
            took = time.monotonic() - started
        finally:
            store.resume()
        assert status == 200 and received < declared  # cut short, never complete
        assert took < BOUND
        assert_served(http, served, instance)


def assert_retry_later(response: httpx.Response, status: int, took: float) -> None:
    assert response.status_code == status, response.text
    assert response.headers["retry-after"] == "3"
    assert took < BOUND, f"answered after {took:.1f} s"


def timed_get(http: httpx.Client, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.get(url, **kwargs)
    return response, time.monotonic() - started


def test_a_stalled_store_is_504_within_the_timeouts_then_served_again(
    store: EmbeddedS3, fault_settings: Settings, instance: Expected
) -> None:
    with run_origin(fault_settings) as served, httpx.Client(timeout=30) as http:
        assert http.get(served.frames_url(instance, "1")).status_code == 200  # index cached
        store.pause()
        try:
            frame, took = timed_get(http, served.frames_url(instance, "2"), headers=OCTET)
            assert_retry_later(frame, 504, took)
            metadata, took = timed_get(http, f"{served.instance_url(instance)}/metadata")
            assert_retry_later(metadata, 504, took)
            ready, took = timed_get(http, f"{served.base}/readyz")
            assert_retry_later(ready, 503, took)
        finally:
            store.resume()
        assert http.get(f"{served.base}/readyz").status_code == 200
        assert_served(http, served, instance)


def test_a_dead_store_is_503_and_a_restarted_one_is_used_without_intervention(
    store: EmbeddedS3, fault_settings: Settings, instance: Expected
) -> None:
    with run_origin(fault_settings) as served, httpx.Client(timeout=30) as http:
        assert_served(http, served, instance)  # pooled connections to the store now
        store.kill()
        try:
            frames, took = timed_get(http, served.frames_url(instance, "1,2"))
            assert_retry_later(frames, 503, took)
            ready, took = timed_get(http, f"{served.base}/readyz")
            assert_retry_later(ready, 503, took)
            # What the origin holds in memory (this instance's metadata) is still served.
            assert http.get(f"{served.instance_url(instance)}/metadata").status_code == 200
        finally:
            store.start()
        # The first request after the restart may meet a pooled connection of the dead
        # store (503); the origin drops it, and the next ones are served.
        deadline = time.monotonic() + 2 * BOUND
        while http.get(served.frames_url(instance, "1")).status_code != 200:
            assert time.monotonic() < deadline, "the origin did not come back by itself"
        assert_served(http, served, instance)



@pytest.mark.parametrize("frames", ["2", "1,2,3"])
def test_a_body_cut_by_the_network_is_never_complete_and_condemns_nothing(
    store: EmbeddedS3, fault_settings: Settings, tmp_path: Path, frames: str
) -> None:
    path = tmp_path / "large.dcm"
    write_tomosynthesis(path, frames=3, rows=256, columns=256, seed=12)  # 128 KiB frames
    inst = ingest(path, fault_settings)
    with CuttingProxy("127.0.0.1", store.port("s3")) as proxy:
        through = proxy.settings(fault_settings)
        with run_origin(through) as served, httpx.Client(timeout=30) as http:
            assert http.get(served.frames_url(inst, "3"), headers=OCTET).status_code == 200
            proxy.cut_after(50_000)  # mid-frame: the store is fine, the connection is not
            headers = OCTET if "," not in frames else {}
            status, declared, received = read_cut(http, served.frames_url(inst, frames), headers)
            assert proxy.cuts == 1
            assert status == 200 and received < declared
            assert_served(http, served, inst)


def test_an_object_shorter_than_its_index_condemns_the_instance(
    store: EmbeddedS3, fault_settings: Settings, instance: Expected
) -> None:
    """The store itself says the frame is not what the index lists: a real inconsistency."""
    layout = KeyLayout(fault_settings.prefix)
    client = make_client(fault_settings)
    key = layout.frame_of(instance.index, 3)
    client.put_object(Bucket=fault_settings.bucket, Key=key, Body=instance.frames[2][:-10])
    with run_origin(fault_settings) as served, httpx.Client(timeout=30) as http:
        status, declared, received = read_cut(http, served.frames_url(instance, "1,2,3,4"))
        assert status == 200 and received < declared
        # Condemned: every frame of it is 404 now (a re-ingest or verify --repair fixes it).
        gone = http.get(served.frames_url(instance, "1"), headers=OCTET)
        assert gone.status_code == 404
        metadata = http.get(f"{served.instance_url(instance)}/metadata")
        assert metadata.status_code == 404


def ingest_command(store: EmbeddedS3, settings: Settings, *args: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(store.environment(prefix=settings.prefix))
    env.update(FRAMECDN_S3_READ_TIMEOUT="1.5", FRAMECDN_S3_CONNECT_TIMEOUT="1")
    return [sys.executable, "-m", "framecdn", "ingest", "--no-progress", *args], env


def committed_keys(settings: Settings, key: InstanceKey) -> list[str]:
    prefix = KeyLayout(settings.prefix).instance_prefix(key)
    return list_keys(make_client(settings), settings.bucket, prefix)


def test_an_ingest_cut_by_a_dying_store_leaves_nothing_visible_and_a_rerun_completes(
    store: EmbeddedS3, fault_settings: Settings, tmp_path: Path
) -> None:
    made = write_tomosynthesis(tmp_path / "tomo.dcm", frames=40, rows=1024, columns=1024, seed=13)
    key = InstanceKey(made.study_uid, made.series_uid, made.sop_uid)
    layout = KeyLayout(fault_settings.prefix)
    command, env = ingest_command(store, fault_settings, "--workers", "2", str(made.path))
    with running(command, env=env) as process:
        keys: list[str] = []

        def frames_stored() -> bool:
            keys[:] = committed_keys(fault_settings, key)
            return any("/frames/" in k for k in keys)

        with frozen_when(process, frames_stored):
            assert layout.index(key) not in keys, "the ingest finished within one slice"
            store.kill()
        try:
            _, err = process.communicate(timeout=120)
        finally:
            store.start()
    assert process.returncode == 1
    [failure] = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert "S3" in failure
    assert layout.index(key) not in committed_keys(fault_settings, key)  # nothing visible

    command, env = ingest_command(store, fault_settings, str(made.path))
    with running(command, env=env) as rerun:
        _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    client = make_client(fault_settings)
    raw = client.get_object(Bucket=fault_settings.bucket, Key=layout.index(key))["Body"].read()
    index = InstanceIndex.from_json(raw)
    for number in (1, 20, 40):
        body = client.get_object(Bucket=fault_settings.bucket, Key=layout.frame_of(index, number))
        assert body["Body"].read() == made.frame(number)


def test_an_ingest_through_a_short_stall_completes(
    store: EmbeddedS3, fault_settings: Settings, tmp_path: Path
) -> None:
    """A store frozen for a second mid-ingest: the uploads are retried, nothing is lost."""
    made = write_tomosynthesis(tmp_path / "tomo.dcm", frames=30, rows=512, columns=512, seed=14)
    key = InstanceKey(made.study_uid, made.series_uid, made.sop_uid)
    command, env = ingest_command(store, fault_settings, "--workers", "2", str(made.path))
    with running(command, env=env) as process:
        deadline = time.monotonic() + 60
        while sum("/frames/" in k for k in committed_keys(fault_settings, key)) < 3:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        store.pause()
        try:
            time.sleep(1.0)
        finally:
            store.resume()
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    with run_origin(fault_settings) as served, httpx.Client(timeout=30) as http:
        url = (
            f"{served.root}/studies/{key.study}/series/{key.series}/instances/{key.instance}"
            "/frames/30"
        )
        assert http.get(url, headers=OCTET).content == made.frame(30)
