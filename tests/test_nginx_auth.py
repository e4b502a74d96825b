"""Access control through the shipped nginx: a real nginx (infra/nginx/framecdn.conf.template)
in front of a real origin with auth on, against the real S3.

The promise under test: nginx never hands a cached answer to a request the origin would
refuse. Each test first fills the cache with a valid token (MISS, then HIT), then asks
without a credential, with an invalid one and with one for another site, and reads
nginx's own access log to see that no cached bytes went out.

Without the nginx binary these tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth_fixtures import (
    CACHE_SECRET,
    VIEWER,
    Clinics,
    IdentityProvider,
    auth_settings,
    bearer,
)
from tests.flooding import flood_while_calm
from tests.nginx_fixtures import RunningNginx, run_nginx
from tests.origin_fixtures import Expected, RunningOrigin, run_origin

pytest_plugins = ["tests.auth_plugin", "tests.nginx_plugin"]

SINGLE = "application/octet-stream"
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
LOG_LINE = re.compile(
    r'^\S+ \[[^\]]+\] "(?P<method>\S+) (?P<target>\S+) [^"]+" (?P<status>\d+) (?P<bytes>\d+) '
    r"cache=(?P<cache>\S*)"
)


@pytest.fixture(scope="module")
def stream_origin(clinics: Clinics, provider: IdentityProvider) -> Iterator[RunningOrigin]:
    with run_origin(auth_settings(clinics, provider, cache_secret=CACHE_SECRET)) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def log_lines(proxy: RunningNginx) -> list[dict[str, Any]]:
    """nginx's access log, parsed (it is written when each request ends)."""
    time.sleep(0.05)
    text = (proxy.directory / "access.log").read_text()
    return [m.groupdict() for m in map(LOG_LINE.match, text.splitlines()) if m]


def missing_like(proxy: RunningNginx, inst: Expected, frames: str = "1") -> str:
    study = inst.study[:-1] + ("2" if inst.study[-1] == "1" else "1")
    return proxy.frames_url(inst, frames).replace(inst.study, study)


def assert_refused_without_cached_bytes(
    proxy: RunningNginx, responses: list[httpx.Response], body: bytes
) -> None:
    """None of ``responses`` carried ``body`` or came from the cache (nginx's own log)."""
    for response in responses:
        assert body not in response.content
        assert response.headers.get("x-cache-status") != "HIT"
    lines = log_lines(proxy)[-len(responses):]
    assert [int(line["status"]) for line in lines] == [r.status_code for r in responses]
    for line in lines:
        assert line["cache"] != "HIT" and int(line["bytes"]) < 1000, line


@pytest.mark.parametrize(
    ("kind", "accept", "number"),
    [("frame", SINGLE, "1"), ("frame list", OHIF_ACCEPT, "1,2"), ("metadata", None, None)],
)
def test_a_cached_answer_is_refused_to_requests_the_origin_refuses(
    http: httpx.Client, stream_nginx: RunningNginx, clinics: Clinics, provider: IdentityProvider,
    kind: str, accept: str | None, number: str | None,
) -> None:
    inst = clinics.a1
    url = stream_nginx.frames_url(inst, number) if number else stream_nginx.metadata_url(inst)
    headers = {"Accept": accept} if accept else {}
    token = provider.token(site="a")
    first = http.get(url, headers={**headers, **bearer(token)})
    assert first.status_code == 200 and first.headers["x-cache-status"] == "MISS"
    second = http.get(url, headers={**headers, **bearer(provider.token(site="a"))})
    assert second.headers["x-cache-status"] == "HIT" and second.content == first.content
    assert second.headers["cache-control"].startswith("private")  # what a CDN would see
    assert "x-accel-expires" not in second.headers
    if kind == "frame":
        assert first.content == inst.frames[0]
    cached = first.content

    anonymous = http.get(url, headers=headers)
    expired = http.get(url, headers={**headers, **bearer(provider.token(site="a", lifetime=-120))})
    forged = http.get(url, headers={**headers, **bearer(token[:-4] + "AAAA")})
    assert [r.status_code for r in (anonymous, expired, forged)] == [401, 401, 401]
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="framecdn"'
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert anonymous.json()["status"] == 401
    assert_refused_without_cached_bytes(stream_nginx, [anonymous, expired, forged], cached)

    # Another site's caller, and a caller whose token names other studies: answered as
    # the origin answers a study that is not there (the cache is not asked for them).
    other_site = http.get(url, headers={**headers, **bearer(provider.token(site="b"))})
    narrow = provider.token(site="a", studies=[clinics.a2.study])
    other_study = http.get(url, headers={**headers, **bearer(narrow)})
    assert other_site.status_code == other_study.status_code == 404
    if number:
        missing = missing_like(stream_nginx, inst, number)
        gone = http.get(missing, headers={**headers, **bearer(token)})
        assert gone.status_code == 404 and gone.content == other_site.content
    assert_refused_without_cached_bytes(stream_nginx, [other_site, other_study], cached)
    # Every refusal leaves nginx as no-store: a CDN in front must keep none of them.
    refusals = [anonymous, expired, forged, other_site, other_study]
    assert [r.headers.get("cache-control") for r in refusals] == ["no-store"] * len(refusals)
    unacceptable = http.get(url, headers={"Accept": "image/x-none", **bearer(token)})
    assert unacceptable.status_code == 406
    assert unacceptable.headers.get("cache-control") == "no-store"


def test_every_caller_partition_has_its_own_entries(
    http: httpx.Client, stream_nginx: RunningNginx, clinics: Clinics, provider: IdentityProvider
) -> None:
    url = stream_nginx.frames_url(clinics.a2, "2")
    site_a = http.get(url, headers={"Accept": SINGLE, **bearer(provider.token(site="a"))})
    assert site_a.headers["x-cache-status"] == "MISS"
    reader = bearer(provider.token(site="*"))
    assert http.get(url, headers={"Accept": SINGLE, **reader}).headers["x-cache-status"] == "MISS"
    again = http.get(url, headers={"Accept": SINGLE, **reader})
    assert again.headers["x-cache-status"] == "HIT" and again.content == clinics.a2.frames[1]
    partitions = {line.split("partition=")[1].split()[0] for line in
                  (stream_nginx.directory / "access.log").read_text().splitlines()[-3:]}
    assert len(partitions) == 2


def test_query_token_is_neither_logged_nor_part_of_the_cache_key(
    http: httpx.Client, stream_nginx: RunningNginx, stream_origin: RunningOrigin,
    clinics: Clinics, provider: IdentityProvider, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    url = stream_nginx.frames_url(clinics.b1, "1,2")
    token, other = provider.token(site="b"), provider.token(site="b")
    first = http.get(url, params={"access_token": token}, headers={"Accept": OHIF_ACCEPT})
    assert first.status_code == 200 and first.headers["x-cache-status"] == "MISS"
    assert b"access_token" not in first.content and token.encode() not in first.content
    # Another credential of the same site, in the header: the same cache entry.
    second = http.get(url, headers={"Accept": OHIF_ACCEPT, **bearer(other)})
    assert second.headers["x-cache-status"] == "HIT" and second.content == first.content
    third = http.get(url, params={"x": "1", "access_token": other}, headers={"Accept": OHIF_ACCEPT})
    assert third.headers["x-cache-status"] == "MISS"  # other parameters still count
    nginx_log = (stream_nginx.directory / "access.log").read_text()
    assert "access_token" not in nginx_log and token not in nginx_log and other not in nginx_log
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("framecdn"))
    assert ours and token not in ours and other not in ours  # (httpx logs its own URLs)
    assert "?x=1 HTTP" in nginx_log.splitlines()[-1]


def test_origin_audit_has_a_line_for_every_request_also_cache_hits(
    http: httpx.Client, stream_nginx: RunningNginx, clinics: Clinics, provider: IdentityProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="framecdn.access")
    url = stream_nginx.frames_url(clinics.b1, "2")
    token = provider.token(site="b", preferred_username="dr-who", sub="subject-b")
    for _ in range(3):
        assert http.get(url, headers={"Accept": SINGLE, **bearer(token)}).status_code == 200
    http.get(url, headers={"Accept": SINGLE})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "framecdn.access"]
    judged = [line for line in lines if line["route"] == "authorize"]
    assert len(judged) == 4
    assert [line["decision"] for line in judged] == ["allowed"] * 3 + ["denied"]
    assert all(line["study"] == clinics.b1.study and line["path"].endswith("/frames/2")
               for line in judged)
    assert {line["subject"] for line in judged[:3]} == {"subject-b"}
    assert all(len(line.get("edge_request_id", "")) == 32 for line in judged)


def test_cors_through_nginx_with_auth(
    http: httpx.Client, stream_nginx: RunningNginx, clinics: Clinics
) -> None:
    url = stream_nginx.frames_url(clinics.a1, "1")
    preflight = http.options(url, headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept",
    })
    assert 200 <= preflight.status_code < 300
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    refused = http.get(url, headers={"Origin": VIEWER})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == VIEWER
    assert refused.headers["www-authenticate"] == 'Bearer realm="framecdn"'


def test_accel_mode_refuses_a_cached_object_without_a_valid_token(
    nginx_binary: str, clinics: Clinics, provider: IdentityProvider, tmp_path: Path,
    http: httpx.Client,
) -> None:
    settings = auth_settings(
        clinics, provider, delivery="accel", presign_window_seconds=1, cache_secret=CACHE_SECRET
    )
    with run_origin(settings) as origin, run_nginx(
        nginx_binary, tmp_path, origin.base, origin.settings
    ) as proxy:
        url = proxy.frames_url(clinics.b1, "1")
        token = provider.token(site="b")
        statuses = []
        for _ in range(2):
            response = http.get(url, headers={"Accept": SINGLE, **bearer(token)})
            assert response.status_code == 200 and response.content == clinics.b1.frames[0]
            assert response.headers["cache-control"].startswith("private")
            statuses.append(response.headers["x-cache-status"])
        assert statuses == ["MISS", "HIT"]  # the object cache, keyed by object path
        refused = [
            http.get(url, headers={"Accept": SINGLE}),
            http.get(url, headers={"Accept": SINGLE, **bearer(provider.token(site="a"))}),
        ]
        assert [r.status_code for r in refused] == [401, 404]
        assert_refused_without_cached_bytes(proxy, refused, clinics.b1.frames[0])


def test_nginx_limits_one_flooding_credential_not_the_others(
    nginx_binary: str, stream_origin: RunningOrigin, clinics: Clinics,
    provider: IdentityProvider, tmp_path: Path,
) -> None:
    with run_nginx(
        nginx_binary, tmp_path, stream_origin.base, stream_origin.settings,
        NGINX_LIMIT_RATE="10r/s", NGINX_LIMIT_ANONYMOUS_RATE="5r/s", NGINX_LIMIT_BURST="5",
    ) as proxy, httpx.Client(timeout=10) as client:
        url = proxy.frames_url(clinics.a1, "1")
        flooding, calm = provider.token(site="a"), provider.token(site="a")
        flood = flood_while_calm(
            url, {"Accept": SINGLE, **bearer(flooding)}, {"Accept": SINGLE, **bearer(calm)},
            calm_requests=12, calm_pause=0.2,  # 5/s: within the per-credential rate
        )
        # The flood got its burst and its rate, no more; the rest was refused.
        statuses = flood.statuses
        allowed = 5 + 1 + 10 * flood.seconds * 1.1
        assert 0 < statuses.count(200) <= allowed, (statuses.count(200), flood.seconds)
        assert statuses.count(429) > 0 and set(statuses) == {200, 429}
        assert "1" in flood.retry_after
        latest = max(flood.calm_latencies)
        print(f"calm: max {latest * 1000:.1f} ms; flood: {len(statuses)} requests")
        assert latest < 2.0  # generous: two cores shared with the whole suite
        anonymous = [client.get(url).status_code for _ in range(20)]
        assert 429 in anonymous and 401 in anonymous
