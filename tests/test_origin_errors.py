"""5xx answers say nothing about the inside; the log line with their request id says it all.

S3 failures are real: a closed port (503), a store that refuses our signature with its
XML error document (502), a socket that never answers (504).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, free_port, hung_server, ingest, run_origin

LEAKS = ("<?xml", "<Error>", "SignatureDoesNotMatch", "AccessDenied", "X-Amz", "Traceback")


@pytest.fixture(scope="module")
def instance(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    path = tmp_path_factory.mktemp("errors") / "a.dcm"
    write_tomosynthesis(path, frames=2, rows=16, columns=16, seed=9)
    return ingest(path, module_settings)


@pytest.fixture
def black_hole() -> Iterator[str]:
    with hung_server() as url:
        yield url


def assert_opaque(response: httpx.Response, status: int, endpoint: str, caplog) -> str:
    """The answer is generic and carries a request id; returns the id's log message."""
    assert response.status_code == status
    assert response.headers["retry-after"] and response.headers["cache-control"] == "no-store"
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert body == {"status": status, "error": body["error"], "request_id": request_id}
    host_port = urlsplit(endpoint).netloc
    for secret in (host_port, str(urlsplit(endpoint).port), *LEAKS):
        assert secret not in response.text, secret
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name == "framecdn.origin" and request_id in r.getMessage()
    ]
    assert len(logged) == 1, logged
    assert host_port in logged[0]
    return logged[0]


def test_unreachable_store_503_hides_the_endpoint(
    module_settings: Settings, instance: Expected, caplog
) -> None:
    caplog.set_level(logging.INFO)
    dead = module_settings.with_overrides(
        s3_endpoint=f"http://127.0.0.1:{free_port()}", s3_connect_timeout=1.0
    )
    with run_origin(dead) as served, httpx.Client(timeout=30) as http:
        frames = http.get(served.frames_url(instance, "1"))
        message = assert_opaque(frames, 503, dead.internal_endpoint, caplog)
        assert frames.json()["error"] == "storage unavailable"
        assert "not reachable" in message
        metadata = http.get(f"{served.root}/studies/{instance.study}/metadata")
        assert_opaque(metadata, 503, dead.internal_endpoint, caplog)
        ready = http.get(f"{served.base}/readyz")
        assert_opaque(ready, 503, dead.internal_endpoint, caplog)
        ids = {r.headers["x-request-id"] for r in (frames, metadata, ready)}
        assert len(ids) == 3  # one per request


def test_store_error_documents_stay_in_the_log(
    module_settings: Settings, instance: Expected, caplog
) -> None:
    caplog.set_level(logging.INFO)
    wrong = module_settings.with_overrides(aws_secret_access_key="not-the-secret")
    with run_origin(wrong) as served, httpx.Client(timeout=30) as http:
        response = http.get(served.frames_url(instance, "1"))
        message = assert_opaque(response, 502, wrong.internal_endpoint, caplog)
        assert response.json()["error"] == "storage error"
        assert "SignatureDoesNotMatch" in message and "403" in message
        series = f"{served.root}/studies/{instance.study}/series/{instance.series}/metadata"
        message = assert_opaque(http.get(series), 502, wrong.internal_endpoint, caplog)
        assert "SignatureDoesNotMatch" in message


def test_hung_store_504_hides_the_endpoint(
    module_settings: Settings, instance: Expected, black_hole: str, caplog
) -> None:
    caplog.set_level(logging.INFO)
    hung = module_settings.with_overrides(s3_endpoint=black_hole, s3_read_timeout=0.5)
    with run_origin(hung) as served, httpx.Client(timeout=30) as http:
        response = http.get(served.frames_url(instance, "2"))
        assert "timed out" in assert_opaque(response, 504, black_hole, caplog)
        assert response.json()["error"] == "storage timeout"


def test_access_log_carries_the_request_id(
    module_settings: Settings, instance: Expected, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="framecdn.access")
    with run_origin(module_settings) as served, httpx.Client(timeout=30) as http:
        assert http.get(served.frames_url(instance, "1")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "framecdn.access"]
    assert any('"request_id":"' in line and '"status":200' in line for line in lines)
