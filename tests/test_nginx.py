"""The nginx layer, with a real nginx in front of a real origin and the real SeaweedFS.

The harness (template rendering, a private nginx.conf, ``run_nginx``) lives in
``tests/nginx_fixtures.py``, shared with ``bench/bench_origin.py``.

Without the nginx binary these tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.s3 import make_client
from framecdn.synthetic import write_tomosynthesis
from tests.nginx_fixtures import (
    TEMPLATE,
    RunningNginx,
    render_template,
    run_nginx,
    template_variables,
    variables_for,
    write_config,
)
from tests.origin_fixtures import Expected, RunningOrigin, ingest, run_origin

pytest_plugins = ["tests.nginx_plugin"]

SINGLE = "application/octet-stream"
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
EVLE = "1.2.840.10008.1.2.1"


# --- data and servers --------------------------------------------------------------


@pytest.fixture(scope="module")
def instance(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """4 frames of 4.5 MiB: more than nginx's in-memory proxy buffers (4 MiB), so the
    response goes through a temp file and the cache, as a real tomosynthesis frame does."""
    path = tmp_path_factory.mktemp("nginx-data") / "tomo.dcm"
    write_tomosynthesis(path, frames=4, rows=1536, columns=1536, seed=23)
    return ingest(path, module_settings)


@pytest.fixture(scope="module")
def victim(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """A small instance whose objects the accel tests delete behind the origin's back."""
    path = tmp_path_factory.mktemp("nginx-victim") / "victim.dcm"
    write_tomosynthesis(path, frames=2, rows=256, columns=256, seed=29)
    return ingest(path, module_settings)


def unknown_uid(uid: str) -> str:
    """A valid UID that names nothing: ``uid`` with its last digit changed."""
    return uid[:-1] + ("2" if uid[-1] == "1" else "1")


def delete_frame_object(settings: Settings, inst: Expected, number: int) -> None:
    key = KeyLayout(settings.prefix).frame_of(inst.index, number)
    make_client(settings).delete_object(Bucket=settings.bucket, Key=key)


@pytest.fixture(scope="module")
def stream_origin(module_settings: Settings, instance: Expected) -> Iterator[RunningOrigin]:
    with run_origin(module_settings) as served:
        yield served


@pytest.fixture(scope="module")
def accel_origin(module_settings: Settings, instance: Expected) -> Iterator[RunningOrigin]:
    # A one-second presign window: the X-Accel-Redirect query changes between requests,
    # which is what the object cache must not key on.
    settings = module_settings.with_overrides(delivery="accel", presign_window_seconds=1)
    with run_origin(settings) as served:
        yield served


@pytest.fixture(scope="module")
def accel_nginx(
    nginx_binary: str, accel_origin: RunningOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNginx]:
    with run_nginx(
        nginx_binary, tmp_path_factory.mktemp("nginx-accel"), accel_origin.base,
        accel_origin.settings,
    ) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body: (headers, content) each."""
    params = dict(
        p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p
    )
    boundary = params["boundary"].strip('"').encode()
    assert body.startswith(b"--" + boundary + b"\r\n"), "body must start with the boundary"
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        parts.append((headers, content.removesuffix(b"\r\n")))
    return parts


# --- the template itself -------------------------------------------------------------


def test_every_template_variable_is_documented_in_its_header() -> None:
    text = TEMPLATE.read_text()
    header = text.split("\nproxy_cache_path", 1)[0]
    names = template_variables(text)
    assert {"NGINX_LISTEN", "NGINX_ORIGIN", "FRAMECDN_ACCEL_LOCATION"} <= names
    for name in names:
        assert f"#   {name} " in header, f"{name} is used but not documented at the top"


def test_envsubst_with_the_variable_list_renders_like_string_template(
    nginx_binary: str, tmp_path: Path
) -> None:
    """What operators run (envsubst with an explicit list) gives the config the tests run,
    and it passes `nginx -t`, also with https to S3 (SNI, certificate verification)."""
    envsubst = shutil.which("envsubst")
    values = {
        "NGINX_LISTEN": "127.0.0.1:18080", "NGINX_SERVER_NAME": "frames.example.org",
        "NGINX_ORIGIN": "127.0.0.1:18081", "NGINX_S3_SERVER": "127.0.0.1:443",
        "NGINX_S3_HOST": "s3.eu-west-1.amazonaws.com", "NGINX_S3_SCHEME": "https",
        "NGINX_RESOLVER": "127.0.0.1", "NGINX_CACHE_DIR": str(tmp_path / "cache"),
        "NGINX_CACHE_MAX_SIZE": "10g", "NGINX_S3_CACHE_MAX_SIZE": "20g",
        "NGINX_ACCESS_LOG": "/dev/null", "NGINX_FRAMES_CACHE_LOCK": "off",
        "NGINX_AUTH_REQUEST": "/_framecdn_authorize", "NGINX_CACHE_SECRET": "s" * 32,
        "NGINX_LIMIT_RATE": "50r/s", "NGINX_LIMIT_ANONYMOUS_RATE": "20r/s",
        "NGINX_LIMIT_BURST": "200",
        "FRAMECDN_ROOT_PATH": "/dicom-web", "FRAMECDN_ACCEL_LOCATION": "/_framecdn_s3/",
    }
    rendered = render_template(values)
    assert "proxy_pass https://framecdn_s3/;" in rendered
    assert "location /_framecdn_s3/ {" in rendered
    assert "$upstream_cache_status" in rendered and "$http_accept" in rendered  # nginx's own
    write_config(nginx_binary, tmp_path, values)  # asserts `nginx -t` passes
    if envsubst is None:
        pytest.skip("envsubst (gettext-base) not installed; string.Template rendering checked")
    shell_format = " ".join(f"${{{name}}}" for name in values)
    result = subprocess.run(
        [envsubst, shell_format], input=TEMPLATE.read_text(), capture_output=True, text=True,
        env={**os.environ, **values}, check=True,
    )
    assert result.stdout == rendered


# --- stream delivery behind nginx ----------------------------------------------------


def test_stream_frame_is_exact_miss_then_hit_never_gzipped(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "2")
    headers = {"Accept": SINGLE, "Accept-Encoding": "gzip, deflate, br"}
    first = http.get(url, headers=headers)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache-status"] == "MISS"
    assert first.content == instance.frames[1]
    assert first.headers["content-type"] == f"{SINGLE}; transfer-syntax={EVLE}"
    assert "content-encoding" not in first.headers
    assert int(first.headers["content-length"]) == len(instance.frames[1])
    second = http.get(url, headers=headers)
    assert second.headers["x-cache-status"] == "HIT"
    assert second.content == instance.frames[1]
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["etag"] == first.headers["etag"]
    assert "max-age=31536000" in second.headers["cache-control"]
    assert "content-encoding" not in second.headers


def test_each_accept_is_its_own_cache_entry(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "1")
    multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
    assert multi.status_code == 200 and multi.headers["x-cache-status"] == "MISS"
    assert multi.headers["content-type"].startswith("multipart/related")
    (part_headers, content), = multipart_parts(multi.headers["content-type"], multi.content)
    assert part_headers["Content-Type"] == f"{SINGLE}; transfer-syntax={EVLE}"
    assert content == instance.frames[0]

    # The same URL with a single-part Accept must not get the cached multipart body.
    single = http.get(url, headers={"Accept": SINGLE})
    assert single.headers["x-cache-status"] == "MISS"
    assert single.headers["content-type"] == f"{SINGLE}; transfer-syntax={EVLE}"
    assert single.content == instance.frames[0]

    for _ in range(2):  # both now cached, each with its own representation
        again_multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
        assert again_multi.headers["x-cache-status"] == "HIT"
        assert again_multi.headers["content-type"] == multi.headers["content-type"]
        assert again_multi.content == multi.content
        again_single = http.get(url, headers={"Accept": SINGLE})
        assert again_single.headers["x-cache-status"] == "HIT"
        assert again_single.headers["content-type"] == single.headers["content-type"]
        assert again_single.content == instance.frames[0]


def test_frame_list_through_nginx(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    response = http.get(stream_nginx.frames_url(instance, "4%2C1"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert [content for _, content in parts] == [instance.frames[3], instance.frames[0]]
    assert all(h["Content-Location"].startswith(stream_nginx.base) for h, _ in parts)


def test_huge_request_heads_stop_at_nginx(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    """nginx's header limit sits below the origin's: a huge header never reaches it."""
    url = stream_nginx.frames_url(instance, "1")
    # An Accept of its own: the answer that fits must not fill another test's cache entry.
    fits = http.get(url, headers={"Accept": f"{SINGLE}; transfer-syntax={EVLE}",
                                  "X-Padding": "p" * 12000})
    assert fits.status_code == 200 and fits.content == instance.frames[0]
    too_long_a_line = http.get(url, headers={"Accept": SINGLE, "X-Padding": "p" * 20000})
    assert too_long_a_line.status_code == 400  # nginx's own refusal, not the origin's 431
    assert "Too Large" in too_long_a_line.text
    padding = {f"X-Padding-{n}": "p" * 15000 for n in range(4)}  # each line fits, not all
    too_many = http.get(url, headers={"Accept": SINGLE, **padding})
    assert too_many.status_code == 400 and "Too Large" in too_many.text


def test_concurrent_cold_requests_make_one_origin_fetch(
    stream_nginx: RunningNginx, instance: Expected
) -> None:
    """proxy_cache_lock: of simultaneous requests for an uncached frame, one fills the
    cache and the others wait for it (HIT) instead of all going to the origin."""
    url = stream_nginx.frames_url(instance, "1")
    headers = {"Accept": f"{SINGLE}; transfer-syntax=*"}  # a key no other test uses

    def fetch(_: int) -> tuple[str, bytes]:
        response = httpx.get(url, headers=headers, timeout=60)
        return response.headers["x-cache-status"], response.content

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(fetch, range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count("MISS") == 1, statuses
    assert set(statuses) == {"MISS", "HIT"}, statuses
    assert all(body == instance.frames[0] for _, body in results)


def test_rendered_cache_settings(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert text.count("proxy_cache_lock on;") == 2
    # Frames: the lock follows the delivery mode (accel answers are never stored, so a
    # lock there would only queue concurrent readers of one frame).
    assert "proxy_cache_lock ${NGINX_FRAMES_CACHE_LOCK};" in text
    for line in [ln.strip() for ln in text.splitlines()]:
        if line.startswith(("proxy_cache_lock_timeout", "proxy_cache_lock_age")):
            seconds = int(line.split()[1].rstrip(";").removesuffix("s"))
            assert seconds >= 30, line  # nginx's default 5 s is shorter than a cold 10 MB fill


def test_frames_lock_follows_the_delivery_mode(tmp_path: Path) -> None:
    settings = Settings()
    for delivery, lock in (("stream", "on"), ("accel", "off")):
        values = variables_for(
            tmp_path, 8080, "http://127.0.0.1:8081", settings.with_overrides(delivery=delivery)
        )
        frames_location = render_template(values).split("location ~ /frames/[^/]+$ {")[1]
        assert f"proxy_cache_lock {lock};" in frames_location.split("}")[0], delivery


def test_ranges_are_answered_by_nginx_on_miss_and_hit(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "3")
    headers = {"Accept": SINGLE, "Range": "bytes=1000-1999"}
    for status in ("MISS", "HIT"):
        response = http.get(url, headers=headers)
        assert response.status_code == 206, (status, response.status_code)
        assert response.headers["x-cache-status"] == status
        assert response.content == instance.frames[2][1000:2000]
        assert response.headers["content-range"] == f"bytes 1000-1999/{len(instance.frames[2])}"
    # The full frame is what got cached.
    full = http.get(url, headers={"Accept": SINGLE})
    assert full.headers["x-cache-status"] == "HIT" and full.content == instance.frames[2]


def test_conditional_requests_and_304_never_cached(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "4")
    accept = {"Accept": f"{SINGLE}; transfer-syntax={EVLE}"}
    # A miss with If-None-Match reaches the origin, which answers 304 ...
    etag = http.head(url, headers={"Accept": SINGLE}).headers["etag"]
    not_modified = http.get(url, headers={**accept, "If-None-Match": etag})
    assert not_modified.status_code == 304
    # ... and that 304 was not stored under the key: a plain GET gets the bytes.
    plain = http.get(url, headers=accept)
    assert plain.status_code == 200 and plain.headers["x-cache-status"] == "MISS"
    assert plain.content == instance.frames[3]
    # Now cached: nginx answers the conditional request itself.
    hit = http.get(url, headers={**accept, "If-None-Match": plain.headers["etag"]})
    assert hit.status_code == 304 and hit.headers["x-cache-status"] == "HIT"
    assert http.get(url, headers={**accept, "If-None-Match": '"other"'}).status_code == 200


def test_metadata_is_json_gzipped_by_nginx_from_one_cache_entry(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.metadata_url(instance)
    accept = {"Accept": "application/dicom+json"}
    zipped = http.get(url, headers={**accept, "Accept-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.headers["x-cache-status"] == "MISS"
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"].startswith("application/dicom+json")
    body = zipped.json()  # httpx gunzips
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["00080018"]["Value"] == [instance.sop]
    bulk = body[0]["7FE00010"]["BulkDataURI"]
    assert bulk.startswith(stream_nginx.root + "/"), bulk  # Host forwarded to the origin
    plain = http.get(url, headers={**accept, "Accept-Encoding": "identity"})
    assert plain.headers["x-cache-status"] == "HIT"  # same entry, not a gzip variant
    assert "content-encoding" not in plain.headers
    assert json.loads(plain.content) == body


def test_ohif_preflight_and_cors_on_cached_answers(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "2")
    viewer = "http://viewer.example.org"
    preflight = http.options(
        url,
        headers={
            "Origin": viewer,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert 200 <= preflight.status_code < 300
    assert preflight.headers["access-control-allow-origin"] in ("*", viewer)
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "accept" in preflight.headers["access-control-allow-headers"].lower()
    for status in ("MISS", "HIT"):
        response = http.get(
            url, headers={"Origin": viewer, "Accept": OHIF_ACCEPT, "Authorization": "Bearer t"}
        )
        assert response.status_code == 200 and response.headers["x-cache-status"] == status
        assert response.headers["access-control-allow-origin"] in ("*", viewer)


def test_origin_errors_pass_through_unchanged(
    http: httpx.Client, stream_nginx: RunningNginx, instance: Expected
) -> None:
    url = stream_nginx.frames_url(instance, "1").replace(instance.sop, unknown_uid(instance.sop))
    gone = http.get(url, headers={"Accept": SINGLE})
    assert gone.status_code == 404 and gone.json()["error"] == "instance not found"
    beyond = http.get(stream_nginx.frames_url(instance, "99"))
    assert beyond.status_code == 400 and beyond.headers["x-cache-status"] == "MISS"
    refused = http.get(stream_nginx.frames_url(instance, "1"), headers={"Accept": "image/jpeg"})
    assert refused.status_code == 406 and refused.headers["content-type"] == "application/json"


def test_internal_accel_location_is_not_reachable_from_outside(
    http: httpx.Client, stream_nginx: RunningNginx, module_settings: Settings, instance: Expected
) -> None:
    key = KeyLayout(module_settings.prefix).frame_of(instance.index, 1)
    response = http.get(f"{stream_nginx.base}/_framecdn_s3/{module_settings.bucket}/{key}")
    assert response.status_code == 404
    assert response.content != instance.frames[0]


# --- accel delivery: nginx fetches from S3 with the presigned URL ---------------------


def test_accel_exact_bytes_from_s3_cached_by_object_path(
    http: httpx.Client,
    accel_nginx: RunningNginx,
    accel_origin: RunningOrigin,
    module_settings: Settings,
    victim: Expected,
) -> None:
    url = accel_nginx.frames_url(victim, "1")
    direct_url = url.replace(accel_nginx.base, accel_origin.base)
    direct = http.get(direct_url, headers={"Accept": SINGLE})
    assert direct.status_code == 200 and direct.content == b""
    first_target = direct.headers["x-accel-redirect"]

    first = http.get(url, headers={"Accept": SINGLE, "Accept-Encoding": "gzip"})
    assert first.status_code == 200, first.text
    assert first.content == victim.frames[0]
    assert first.headers["x-cache-status"] == "MISS"
    assert first.headers["content-type"] == f"{SINGLE}; transfer-syntax={EVLE}"
    assert "content-encoding" not in first.headers
    # The origin's own headers, not S3's: its ETag, Vary, Cache-Control; no x-amz-*.
    assert first.headers["etag"] == direct.headers["etag"]
    assert first.headers["vary"] == "Accept"
    assert first.headers["cache-control"] == module_settings.frame_cache_control
    assert not [name for name in first.headers if "amz" in name.lower()]  # S3/SeaweedFS's own
    assert "last-modified" not in first.headers
    assert "x-accel-redirect" not in first.headers

    time.sleep(1.1)  # next presign window: a different query for the same object
    second_target = http.get(direct_url, headers={"Accept": SINGLE}).headers["x-accel-redirect"]
    assert second_target.split("?")[0] == first_target.split("?")[0]
    assert second_target != first_target
    second = http.get(url, headers={"Accept": SINGLE})
    assert second.headers["x-cache-status"] == "HIT"
    assert second.content == victim.frames[0]

    # Served from nginx's object cache, not S3: it survives the object's deletion.
    delete_frame_object(module_settings, victim, 1)
    third = http.get(url, headers={"Accept": SINGLE})
    assert third.status_code == 200 and third.headers["x-cache-status"] == "HIT"
    assert third.content == victim.frames[0]


def test_accel_keeps_cors_conditional_head_and_ranges(
    http: httpx.Client, accel_nginx: RunningNginx, instance: Expected
) -> None:
    url = accel_nginx.frames_url(instance, "2")
    viewer = {"Origin": "http://viewer.example.org", "Accept": SINGLE}
    response = http.get(url, headers=viewer)
    assert response.status_code == 200 and response.content == instance.frames[1]
    assert response.headers["access-control-allow-origin"] in ("*", viewer["Origin"])
    assert "ETag" in response.headers["access-control-expose-headers"]
    etag = response.headers["etag"]
    again = http.get(url, headers={**viewer, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = http.head(url, headers=viewer)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == f"{SINGLE}; transfer-syntax={EVLE}"
    ranged = http.get(url, headers={**viewer, "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == instance.frames[1][:100]
    # Multipart is streamed by the origin even in accel mode, and cached as such.
    multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
    assert multi.headers["content-type"].startswith("multipart/related")
    (_, content), = multipart_parts(multi.headers["content-type"], multi.content)
    assert content == instance.frames[1]


def test_accel_missing_instance_is_the_origins_404_and_evicted_object_404(
    http: httpx.Client,
    accel_nginx: RunningNginx,
    module_settings: Settings,
    victim: Expected,
) -> None:
    url = accel_nginx.frames_url(victim, "1").replace(victim.sop, unknown_uid(victim.sop))
    gone = http.get(url, headers={"Accept": SINGLE})
    assert gone.status_code == 404, gone.text
    assert gone.json()["error"] == "instance not found"  # the origin's answer, not nginx's
    # Index present but the object already gone (an eviction in progress), never cached:
    delete_frame_object(module_settings, victim, 2)
    evicted = http.get(accel_nginx.frames_url(victim, "2"), headers={"Accept": SINGLE})
    assert evicted.status_code == 404
    assert evicted.headers["content-type"] == "application/json"
    # The origin's Cache-Control was copied on X-Accel-Redirect; no-store overrides it.
    assert "no-store" in evicted.headers["cache-control"]
    assert "<Error>" not in evicted.text


def test_accel_url_signed_for_another_host_is_refused_by_s3(
    nginx_binary: str,
    http: httpx.Client,
    module_settings: Settings,
    instance: Expected,
    tmp_path: Path,
) -> None:
    """SeaweedFS checks the signature, which covers Host: with NGINX_S3_HOST not the host
    the origin signed for, S3 refuses and nginx answers 502 (never the bytes); with the
    right one the same origin's answer gets the frame."""
    settings = module_settings.with_overrides(delivery="accel")
    port = urlsplit(settings.s3_endpoint or "").port
    with run_origin(settings) as origin:
        with run_nginx(
            nginx_binary, tmp_path / "wrong", origin.base, origin.settings,
            NGINX_S3_HOST=f"localhost:{port}",
        ) as proxy:
            response = http.get(proxy.frames_url(instance, "1"), headers={"Accept": SINGLE})
            assert response.status_code == 502, response.status_code
            assert "storage refused the signed URL" in response.json()["error"]
            assert "no-store" in response.headers["cache-control"]
            again = http.get(proxy.frames_url(instance, "1"), headers={"Accept": SINGLE})
            assert again.status_code == 502  # the refusal was not cached
        with run_nginx(nginx_binary, tmp_path / "right", origin.base, origin.settings) as proxy:
            response = http.get(proxy.frames_url(instance, "1"), headers={"Accept": SINGLE})
            assert response.status_code == 200 and response.content == instance.frames[0]
