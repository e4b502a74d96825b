"""A store that stalls, dies or cuts a body mid-way: the origin answers 503/504 with
Retry-After within its timeouts, never ends a cut body as complete, condemns nothing,
and serves again by itself once the store is back.

Real SeaweedFS of the module's own (paused with SIGSTOP, killed with SIGKILL and
restarted on its data directory), real uvicorn, a real TCP proxy that cuts connections.
Only the store's own "no such key" may condemn an instance's index.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, ingest, run_origin
from tests.store_faults import own_store

READ_TIMEOUT = 1.5
CONNECT_TIMEOUT = 1.0
#: The longest a request may take when the store does not answer: connect, then read.
BOUND = CONNECT_TIMEOUT + READ_TIMEOUT + 3.0


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


def read_cut(http: httpx.Client, url: str) -> tuple[int, int, int]:
    """(status, declared length, bytes received) of an answer expected to be cut short."""
    with http.stream("GET", url) as response:
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
