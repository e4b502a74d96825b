"""Access control at the origin, over real HTTP (uvicorn) against the real S3.

Two clinics (sites ``a`` and ``b``) share one bucket under their own prefixes; tokens come
from a Keycloak-like realm of our own (tests/auth_fixtures.py: RSA and EC keys, a JWKS over
real HTTP). Each refusal is checked for its status, its RFC 6750 challenge and its audit
line; each grant for the exact frame bytes pydicom reads from the source file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.errors import ConfigError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.origin.apikeys import ApiKeys
from framecdn.origin.app import create_app
from framecdn.origin.auth import privatise, shared_max_age, strip_query_token
from framecdn.origin.ratelimit import RateLimiter
from framecdn.origin.tokens import InvalidToken, TokenVerifier, allowed_algorithms
from tests.auth_fixtures import (
    CACHE_SECRET,
    CLIENT_ID,
    HS_SECRET,
    VIEWER,
    Clinics,
    IdentityProvider,
    auth_settings,
    bearer,
    rsa_key,
)
from tests.flooding import flood_while_calm
from tests.origin_fixtures import Expected, RunningOrigin, flush_access_markers, run_origin

pytest_plugins = ["tests.auth_plugin"]

SINGLE = "application/octet-stream"
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(clinics: Clinics, provider: IdentityProvider) -> Iterator[RunningOrigin]:
    settings = auth_settings(
        clinics, provider, auth_subject_claim="preferred_username", cache_secret=CACHE_SECRET
    )
    with run_origin(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """The access-log lines written so far in this test, parsed."""
    caplog.set_level(logging.INFO, logger="framecdn.access")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "framecdn.access"]

    return lines


@dataclass(frozen=True)
class Uids:
    study: str
    series: str
    sop: str


def elsewhere(inst: Expected) -> Uids:
    """The same series and instance UIDs under a study that exists nowhere."""
    study = inst.study[:-1] + ("2" if inst.study[-1] == "1" else "1")
    return Uids(study, inst.series, inst.sop)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


def claims_of(provider: IdentityProvider, **extra: Any) -> dict[str, Any]:
    return {
        "iss": provider.url, "aud": ["framecdn"], "azp": CLIENT_ID, "site": "a",
        "exp": int(time.time()) + 300, "sub": "x", **extra,
    }


def frame_url(served: RunningOrigin, inst: Expected | Uids, frames: str = "1") -> str:
    series = f"{served.root}/studies/{inst.study}/series/{inst.series}"
    return f"{series}/instances/{inst.sop}/frames/{frames}"


def metadata_urls(served: RunningOrigin, inst: Expected | Uids) -> list[str]:
    study = f"{served.root}/studies/{inst.study}"
    series = f"{study}/series/{inst.series}"
    return [f"{series}/instances/{inst.sop}/metadata", f"{series}/metadata", f"{study}/metadata"]


def comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k != "date"}
    return response.status_code, response.content, headers


# --- granted -------------------------------------------------------------------------


def test_keycloak_shaped_rs256_token_reads_its_own_sites_frames_and_metadata(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    token = provider.token(site="a")
    single = http.get(
        frame_url(served, clinics.a1, "2"), headers={**bearer(token), "Accept": SINGLE}
    )
    assert single.status_code == 200, single.text
    assert single.content == clinics.a1.frames[1]
    multi = http.get(
        frame_url(served, clinics.a2, "1,2"), headers={**bearer(token), "Accept": OHIF_ACCEPT}
    )
    assert multi.status_code == 200
    assert clinics.a2.frames[0] in multi.content and clinics.a2.frames[1] in multi.content
    for url in metadata_urls(served, clinics.a1):
        metadata = http.get(url, headers=bearer(token))
        assert metadata.status_code == 200, url
        assert metadata.json()[0]["0020000D"]["Value"] == [clinics.a1.study]


def test_reads_leave_their_access_marker_under_the_sites_prefix(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    s3_client: Any,
) -> None:
    """Each site's sweeper reads the markers under its own prefix: a read goes there
    (a frame read at site a, a rendered thumbnail at site b)."""
    frame = http.get(
        frame_url(served, clinics.a1), headers={**bearer(provider.token(site="a")),
                                                "Accept": SINGLE}
    )
    assert frame.status_code == 200
    b1 = clinics.b1
    thumbnail = http.get(
        f"{served.root}/studies/{b1.study}/series/{b1.series}/instances/{b1.sop}/thumbnail",
        headers={**bearer(provider.token(site="b")), "Accept": "image/png"},
    )
    assert thumbnail.status_code == 200, thumbnail.text
    flush_access_markers(served)  # (a read already marked this hour is not due again)
    base = clinics.base.prefix
    for site, inst in (("a", clinics.a1), ("b", clinics.b1)):
        marker = KeyLayout(f"{base}/{site}").access_marker(inst.study)
        body = s3_client.get_object(Bucket=clinics.base.bucket, Key=marker)["Body"].read()
        assert json.loads(body)["study"] == inst.study
    stray = KeyLayout(base).access_prefix()
    listed = s3_client.list_objects_v2(Bucket=clinics.base.bucket, Prefix=stray)
    assert listed.get("KeyCount", 0) == 0  # nothing under the origin's own prefix


@pytest.mark.parametrize(
    ("name", "site", "studies"),
    [("es256", "b", "b1"), ("hs256", "b", "b1"), ("site-list", ["a", "b"], "b1"),
     ("all-sites", "*", "b1"), ("all-sites", "*", "a1"), ("rfc9068", "a", "a1")],
)
def test_other_keys_and_site_claims(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    name: str, site: Any, studies: str,
) -> None:
    inst: Expected = getattr(clinics, studies)
    if name == "es256":
        token = provider.token(provider.keys[1], site=site)
    elif name == "hs256":
        import jwt

        token = jwt.encode(claims_of(provider, site=site), HS_SECRET, algorithm="HS256")
    elif name == "rfc9068":  # an RFC 9068 access token: its client in client_id, no azp
        token = provider.token(site=site, azp=None, client_id=CLIENT_ID, typ=None,
                               headers={"typ": "at+jwt"})
    else:
        token = provider.token(site=site)
    response = http.get(frame_url(served, inst), headers={**bearer(token), "Accept": SINGLE})
    assert response.status_code == 200, (name, response.text)
    assert response.content == inst.frames[0]


def test_clock_skew_within_the_leeway_is_accepted(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    token = provider.token(site="a", lifetime=-10)  # expired 10 s ago; leeway is 30 s
    response = http.get(frame_url(served, clinics.a1), headers=bearer(token))
    assert response.status_code == 200


def test_api_keys_read_their_site_only(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics
) -> None:
    def get(inst: Expected | Uids, key: str) -> httpx.Response:
        return http.get(frame_url(served, inst), headers={**bearer(key), "Accept": SINGLE})

    assert get(clinics.a1, clinics.key_a).content == clinics.a1.frames[0]
    other_site = get(clinics.b1, clinics.key_a)
    assert comparable(other_site) == comparable(get(elsewhere(clinics.b1), clinics.key_a))
    assert get(clinics.b1, clinics.key_b).content == clinics.b1.frames[0]
    assert get(clinics.b1, clinics.key_all).content == clinics.b1.frames[0]
    assert get(clinics.a1, clinics.key_all).content == clinics.a1.frames[0]
    wrong = get(clinics.a1, clinics.key_a[:-2] + "xx")
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


# --- refused -------------------------------------------------------------------------


def _confused(provider: IdentityProvider) -> str:
    """HS256 "signed" with the RSA public key as HMAC secret: algorithm confusion."""
    pem = provider.keys[0].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": provider.keys[0].kid}
    claims = claims_of(provider)
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode()))
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


REFUSED: dict[str, tuple[Callable[[IdentityProvider], str], str]] = {
    "expired": (lambda p: p.token(site="a", lifetime=-120), "token expired"),
    "not yet valid": (
        lambda p: p.token(site="a", not_before=time.time() + 120), "token not yet valid"
    ),
    "wrong audience": (
        lambda p: p.token(site="a", aud=["account", "other-api"]), "token wrong audience"
    ),
    "wrong issuer": (
        lambda p: p.token(site="a", iss="http://127.0.0.1:1/realms/evil"), "token wrong issuer"
    ),
    "wrong signature": (lambda p: p.token(rsa_key("rsa-1"), site="a"), "token bad signature"),
    "unknown kid": (lambda p: p.token(rsa_key("no-such-key"), site="a"), "token unknown key id"),
    "alg none": (
        lambda p: forged({"alg": "none", "typ": "JWT"}, claims_of(p)), "token algorithm not allowed"
    ),
    "alg none kid": (
        lambda p: forged({"alg": "none", "kid": "rsa-1"}, claims_of(p)),
        "token algorithm not allowed",
    ),
    # With an HS secret configured, HS256 is checked against that secret only (never
    # against a public key); without one, HS256 is not allowed at all (next test).
    "HS/RS confusion": (_confused, "token bad signature"),
    "ES key, RS alg": (
        lambda p: forged({"alg": "RS256", "kid": "ec-1"}, claims_of(p), b"x" * 256),
        "token algorithm not allowed for its key",
    ),
    "wrong azp": (
        lambda p: p.token(site="a", azp="another-client"), "token wrong authorized party"
    ),
    # RFC 9068 access tokens name their client in client_id (and carry no azp).
    "wrong client_id": (
        lambda p: p.token(site="a", azp=None, client_id="another-client"),
        "token wrong authorized party",
    ),
    "neither azp nor client_id": (
        lambda p: p.token(site="a", azp=None), "token wrong authorized party"
    ),
    "azp before client_id": (
        lambda p: p.token(site="a", azp="another-client", client_id=CLIENT_ID),
        "token wrong authorized party",
    ),
    "no exp": (lambda p: p.token(site="a", exp=None), "token missing claim"),
    # RFC 7519 NumericDate is a JSON number: PyJWT alone takes int("1796613609").
    "exp a string": (
        lambda p: p.token(site="a", exp=str(int(time.time()) + 300)), "token date not a number"
    ),
    "nbf a string": (
        lambda p: p.token(site="a", nbf=str(int(time.time()) - 1)), "token date not a number"
    ),
    "iat a string": (
        lambda p: p.token(site="a", iat=str(int(time.time()) - 1)), "token date not a number"
    ),
    "iat a boolean": (lambda p: p.token(site="a", iat=True), "token date not a number"),
    "studies not UIDs": (
        lambda p: p.token(site="a", studies=["../b"]), "studies claim is not a list of UIDs"
    ),
    "garbage": (lambda p: "not-a-token", "unknown API key"),
    "malformed jwt": (lambda p: "eyJ.eyJ.sig", "token malformed"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_invalid_tokens_are_refused_with_rfc6750_challenge_and_audited(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    audit: Callable[[], list[dict[str, Any]]], case: str,
) -> None:
    make, reason = REFUSED[case]
    token = make(provider)
    response = http.get(frame_url(served, clinics.a1), headers={**bearer(token), "Accept": SINGLE})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="framecdn", error="invalid_token"'
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"status": 401, "error": "invalid credential"}
    assert clinics.a1.frames[0] not in response.content
    (line,) = [x for x in audit() if x["status"] == 401]
    assert line["decision"] == "denied" and line["reason"] == reason, line
    assert line["study"] == clinics.a1.study and line["bytes"] == len(response.content)
    assert token not in json.dumps(line)


def test_jwks_file_verifier_refuses_hmac_and_none_outright(
    provider: IdentityProvider, clinics: Clinics, tmp_path: Path
) -> None:
    """Only public keys configured: an HS256 token made with the RSA public key as its
    secret, and `alg: none`, are refused before any signature check."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(provider.jwks()))
    settings = auth_settings(clinics, provider, auth_jwks_url=None, auth_jwt_secret=None,
                             auth_jwks_file=str(jwks))
    verifier = TokenVerifier(settings)

    def reason(token: str) -> str:
        with pytest.raises(InvalidToken) as refused:
            asyncio.run(verifier.verify(token))
        return str(refused.value)

    assert reason(_confused(provider)) == "algorithm not allowed"
    assert reason(forged({"alg": "none", "kid": "rsa-1"}, claims_of(provider))) == (
        "algorithm not allowed"
    )
    assert reason(forged({"alg": "HS256"}, claims_of(provider))) == "algorithm not allowed"
    claims = asyncio.run(verifier.verify(provider.token(provider.keys[1], site="a")))
    assert claims["site"] == "a"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}]
)
def test_no_credential_is_401_without_an_error_code(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, headers: dict[str, str],
    audit: Callable[[], list[dict[str, Any]]],
) -> None:
    for url in [frame_url(served, clinics.a1), *metadata_urls(served, clinics.a1)]:
        response = http.get(url, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="framecdn"'
    assert {line["reason"] for line in audit()} == {"no credential"}


def test_a_site_the_origin_does_not_serve_is_403_insufficient_scope(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    for site in ("c", None):
        token = provider.token(site=site)
        response = http.get(frame_url(served, clinics.a1), headers=bearer(token))
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_rotated_key_is_fetched_and_unknown_kids_cannot_hammer_the_jwks(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    url = frame_url(served, clinics.a1)
    assert http.get(url, headers=bearer(provider.token(site="a"))).status_code == 200
    rotated = rsa_key(f"rsa-{uuid.uuid4().hex[:6]}")
    provider.keys.append(rotated)
    time.sleep(1.1)  # the refresh interval of these settings
    before = provider.fetches
    assert http.get(url, headers=bearer(provider.token(rotated, site="a"))).status_code == 200
    assert provider.fetches == before + 1
    # A burst of tokens naming made-up keys: at most one fetch per refresh interval (1 s).
    before = provider.fetches
    started = time.monotonic()
    stranger = rsa_key("stranger")
    for _ in range(30):
        token = provider.token(stranger, headers={"kid": uuid.uuid4().hex}, site="a")
        assert http.get(url, headers=bearer(token)).status_code == 401
    elapsed = time.monotonic() - started
    assert provider.fetches - before <= 1 + int(elapsed / 1.0), (provider.fetches - before, elapsed)


# --- out of scope answers exactly like missing ---------------------------------------


def test_another_sites_study_answers_exactly_like_a_missing_one(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    token = provider.token(site="a")
    b1, gone = clinics.b1, elsewhere(clinics.b1)
    pairs = [(frame_url(served, b1), frame_url(served, gone))]
    pairs += [(frame_url(served, b1, "1,2"), frame_url(served, gone, "1,2"))]
    pairs += list(zip(metadata_urls(served, b1), metadata_urls(served, gone), strict=True))
    for accept in (SINGLE, OHIF_ACCEPT, "application/dicom+json"):
        for other, missing in pairs:
            headers = {**bearer(token), "Accept": accept}
            seen, absent = http.get(other, headers=headers), http.get(missing, headers=headers)
            assert seen.status_code in (404, 406)
            assert comparable(seen) == comparable(absent), (other, accept)


def test_a_study_outside_the_token_answers_exactly_like_a_missing_one(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    audit: Callable[[], list[dict[str, Any]]],
) -> None:
    token = provider.token(site="a", studies=[clinics.a1.study])  # a link for one reader
    assert http.get(frame_url(served, clinics.a1), headers=bearer(token)).status_code == 200
    a2, gone = clinics.a2, elsewhere(clinics.a2)
    for other, missing in [
        (frame_url(served, a2), frame_url(served, gone)),
        *zip(metadata_urls(served, a2), metadata_urls(served, gone), strict=True),
    ]:
        seen = http.get(other, headers=bearer(token))
        absent = http.get(missing, headers=bearer(token))
        assert seen.status_code == 404
        assert comparable(seen) == comparable(absent)
    denied = [line for line in audit() if line["study"] == a2.study]
    assert denied and all(
        line["decision"] == "denied" and line["reason"] == "study out of scope" for line in denied
    )
    # A space-separated claim (as a Keycloak attribute mapper may send it) works too.
    spaced = provider.token(site="a", studies=f"{clinics.a2.study} {clinics.a1.study}")
    assert http.get(frame_url(served, a2), headers=bearer(spaced)).status_code == 200


def _median_ms(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = http.get(url, headers=headers)
    assert response.status_code == 404
    return (time.perf_counter() - started) * 1000


def _index_misses(served: RunningOrigin) -> float:
    return served.origin.metrics.index_cache.labels("miss")._value.get()


@pytest.mark.parametrize("claim", ["site", "studies"])
def test_out_of_scope_takes_the_same_s3_work_and_time_as_missing(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    claim: str,
) -> None:
    """What a caller can time does not tell whether a study it may not read exists.

    Site token: another site's study costs the same index lookups in the caller's own
    prefix as a study that exists nowhere. Studies token: a study outside the claim is
    looked for nowhere, existing or not. Each pair is counted (S3 lookups, exactly) and
    timed (medians of interleaved requests, within a loose bound: 2 shared cores)."""
    if claim == "site":
        token, existing = provider.token(site="a"), clinics.b1
    else:
        token, existing = provider.token(site="a", studies=[clinics.a1.study]), clinics.a2
    headers = {**bearer(token), "Accept": SINGLE}
    other, missing = frame_url(served, existing), frame_url(served, elsewhere(existing))
    work = []
    for url in (other, missing):
        before = _index_misses(served)
        http.get(url, headers=headers)
        work.append(_index_misses(served) - before)
    assert work[0] == work[1], work
    times: dict[str, list[float]] = {"other": [], "missing": []}
    for _ in range(40):
        times["other"].append(_median_ms(http, other, headers))
        times["missing"].append(_median_ms(http, missing, headers))
    a, b = statistics.median(times["other"]), statistics.median(times["missing"])
    print(f"{claim}: out of scope {a:.2f} ms, missing {b:.2f} ms (medians of 40)")
    assert abs(a - b) <= max(0.5 * max(a, b), 2.0), (a, b)


# --- the query token -----------------------------------------------------------------


def test_query_token_works_and_never_reaches_urls_or_logs(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    audit: Callable[[], list[dict[str, Any]]], caplog: pytest.LogCaptureFixture,
) -> None:
    token = provider.token(site="a")
    url = frame_url(served, clinics.a1, "1,2") + f"?access_token={token}"
    multi = http.get(url, headers={"Accept": OHIF_ACCEPT})
    assert multi.status_code == 200
    lines = multi.content.split(b"\r\n")
    locations = [line for line in lines if line.startswith(b"Content-Location")]
    assert len(locations) == 2
    assert all(b"access_token" not in line and token.encode() not in line for line in locations)
    for metadata_url in metadata_urls(served, clinics.a1):
        metadata = http.get(metadata_url, params={"access_token": token, "x": "1"})
        assert metadata.status_code == 200
        bulk = metadata.json()[0]["7FE00010"]["BulkDataURI"]
        assert "access_token" not in bulk and token not in bulk and "?" not in bulk
    assert token not in caplog.text and "access_token" not in caplog.text
    assert len(audit()) == 4 and {line["decision"] for line in audit()} == {"allowed"}
    both = http.get(url, headers=bearer(token))
    assert both.status_code == 400
    assert 'error="invalid_request"' in both.headers["www-authenticate"]
    assert token not in caplog.text


# --- audit trail ---------------------------------------------------------------------


def test_audit_lines_name_who_read_which_study_and_what_was_sent(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    audit: Callable[[], list[dict[str, Any]]],
) -> None:
    token = provider.token(site="a", preferred_username="dr-jones")
    got = http.get(frame_url(served, clinics.a1, "2"), headers={**bearer(token), "Accept": SINGLE})
    http.get(frame_url(served, clinics.b1), headers=bearer(token))
    http.get(frame_url(served, clinics.a1), headers=bearer(clinics.key_b))
    http.get(frame_url(served, clinics.a1))
    read, other_site, key_b, anonymous = audit()
    assert read["site"] == "a" and read["subject"] == "dr-jones" and read["auth"] == "jwt"
    assert read["study"] == clinics.a1.study and read["decision"] == "allowed"
    assert read["status"] == 200 and read["bytes"] == len(got.content) == len(clinics.a1.frames[1])
    assert read["time"].endswith("+00:00") and read["route"] == "frames"
    assert other_site["study"] == clinics.b1.study and other_site["status"] == 404
    # Another site's study is logged as a study outside a studies claim is (one reason for
    # both), and unlike a study that exists nowhere: probing, not a typo.
    assert other_site["decision"] == "denied" and other_site["reason"] == "study out of scope"
    http.get(frame_url(served, elsewhere(clinics.b1)), headers=bearer(token))
    typo = audit()[-1]
    assert typo["status"] == 404 and typo["decision"] == "allowed" and typo["reason"] == "-"
    assert key_b["subject"] == "bridge-b" and key_b["auth"] == "api-key" and key_b["status"] == 404
    assert anonymous["decision"] == "denied" and anonymous["subject"] == "-"
    # The documented one-liner, in Python: who read study S, and when.
    readers = [
        (x["time"], x["site"], x["subject"]) for x in audit()
        if x["study"] == clinics.a1.study and x["decision"] == "allowed" and x["status"] < 300
    ]
    assert readers == [(read["time"], "a", "dr-jones")]


# --- caching that respects it, CORS --------------------------------------------------


def test_answers_are_private_and_only_the_shipped_nginx_learns_how_long_to_keep_them(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    token = provider.token(site="a")
    url = frame_url(served, clinics.a1)
    direct = http.get(url, headers={**bearer(token), "Accept": SINGLE})
    assert direct.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert "x-accel-expires" not in direct.headers
    metadata = http.get(metadata_urls(served, clinics.a1)[0], headers=bearer(token))
    assert metadata.headers["cache-control"] == "private, max-age=300"
    spoofed = http.get(url, headers={**bearer(token), "X-Framecdn-Cache": "guess-" + "x" * 20})
    assert "x-accel-expires" not in spoofed.headers
    nginx = http.get(url, headers={**bearer(token), "X-Framecdn-Cache": CACHE_SECRET})
    assert nginx.headers["cache-control"].startswith("private")
    assert nginx.headers["x-accel-expires"] == "31536000"
    names = list(nginx.headers.keys())  # before Cache-Control: what nginx 1.22 needs
    assert names.index("x-accel-expires") < names.index("cache-control")


def test_every_error_answer_with_auth_on_is_no_store(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    """404 (missing, another site's, outside the claim), 406, 416, 400, 401, 403, 431: a cache
    that keeps 4xx (heuristically, or a CDN by default) must not keep one caller's answer."""
    token = provider.token(site="a")
    narrow = provider.token(site="a", studies=[clinics.a1.study])
    frame = frame_url(served, clinics.a1)
    asked = {
        "missing": http.get(frame_url(served, elsewhere(clinics.a1)), headers=bearer(token)),
        "other site": http.get(frame_url(served, clinics.b1), headers=bearer(token)),
        "outside claim": http.get(frame_url(served, clinics.a2), headers=bearer(narrow)),
        "missing metadata": http.get(
            metadata_urls(served, elsewhere(clinics.a1))[0], headers=bearer(token)
        ),
        "406": http.get(frame, headers={**bearer(token), "Accept": "image/x-none"}),
        "416": http.get(
            frame, headers={**bearer(token), "Accept": SINGLE, "Range": "bytes=99999999999-"}
        ),
        "400": http.get(frame_url(served, clinics.a1, "0"), headers=bearer(token)),
        "401": http.get(frame),
        "403": http.get(frame, headers=bearer(provider.token(site="nowhere"))),
        "nginx 404": http.get(
            frame_url(served, elsewhere(clinics.a1)),
            headers={**bearer(token), "X-Framecdn-Cache": CACHE_SECRET},
        ),
    }
    for what, response in asked.items():
        assert response.status_code >= 400, (what, response.status_code)
        assert response.headers.get("cache-control") == "no-store", (what, response.headers)
        assert "x-accel-expires" not in response.headers, what
    port = int(served.base.rsplit(":", 1)[1])
    head = f"GET {frame.removeprefix(served.base)} HTTP/1.1\r\nHost: x\r\n"
    head += "X-Big: " + "x" * 100_000 + "\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ") and b"\r\ncache-control: no-store\r\n" in answer


def test_authorize_endpoint_answers_only_nginx_and_names_the_partition(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    authorize = f"{served.base}/_framecdn/authorize"
    path = frame_url(served, clinics.a1).removeprefix(served.base)

    def ask(token: str | None, uri: str = path, secret: str = CACHE_SECRET, method: str = "GET"):
        headers = {"X-Framecdn-Cache": secret, "X-Original-URI": uri, "X-Original-Method": method}
        if token:
            headers.update(bearer(token))
        return http.get(authorize, headers=headers)

    token_a = provider.token(site="a")
    assert ask(token_a, secret="wrong-secret-of-some-length").status_code == 404
    allowed = ask(token_a)
    assert allowed.status_code == 204
    site_b = ask(provider.token(site="b")).headers["x-framecdn-partition"]
    both = ask(provider.token(site=["a", "b"])).headers["x-framecdn-partition"]
    assert len({allowed.headers["x-framecdn-partition"], site_b, both}) == 3
    narrow = ask(provider.token(site="a", studies=[clinics.a2.study]))
    assert narrow.headers["x-framecdn-partition"] == "none"
    assert ask(None).status_code == 401
    assert ask(None, method="OPTIONS").status_code == 204
    assert ask(None, uri=f"{path}?access_token={token_a}").status_code == 204
    expired = ask(provider.token(site="a", lifetime=-120))
    assert expired.status_code == 401 and "invalid_token" in expired.headers["www-authenticate"]


def test_cors_preflight_needs_no_credential_and_never_says_star(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider
) -> None:
    url = frame_url(served, clinics.a1)
    preflight = http.options(url, headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept",
    })
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    stranger = http.options(
        url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in stranger.headers
    assert "access-control-allow-credentials" not in stranger.headers
    refused = http.get(url, headers={"Origin": VIEWER})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == VIEWER
    assert "WWW-Authenticate" in refused.headers["access-control-expose-headers"]
    granted = http.get(url, headers={"Origin": VIEWER, **bearer(provider.token(site="a"))})
    assert granted.headers["access-control-allow-origin"] == VIEWER


# --- rate limits ---------------------------------------------------------------------


def test_one_flooding_token_gets_429_while_another_is_served(
    clinics: Clinics, provider: IdentityProvider
) -> None:
    settings = auth_settings(clinics, provider, rate_limit=20.0, rate_burst=10)
    with run_origin(settings) as origin:
        flooding, calm = provider.token(site="a", sub="flood"), provider.token(site="a", sub="calm")
        flood = flood_while_calm(
            frame_url(origin, clinics.a1), bearer(flooding), bearer(calm),
            calm_requests=15, calm_pause=0.1,  # 10/s: within the rate
        )
    # The flood got its burst and its rate, no more; the rest was refused.
    statuses = flood.statuses
    allowed = 10 + 1 + 20 * flood.seconds * 1.1
    assert 0 < statuses.count(200) <= allowed, (statuses.count(200), flood.seconds)
    assert statuses.count(429) > 0 and set(statuses) == {200, 429}
    assert flood.retry_after and all(int(value) >= 1 for value in flood.retry_after)
    latest = max(flood.calm_latencies)
    print(f"calm caller: max {latest * 1000:.1f} ms, flood: {len(statuses)} requests")
    assert latest < 2.0  # generous: two cores shared with the whole suite


# --- credentials, presigned URLs ------------------------------------------------------


def test_s3_credentials_never_appear_in_answers_or_logs(
    http: httpx.Client, served: RunningOrigin, clinics: Clinics, provider: IdentityProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, access_key = served.settings.aws_secret_access_key, served.settings.aws_access_key_id
    assert secret and access_key
    token = provider.token(site="a")
    seen: list[httpx.Response] = []
    for inst in (clinics.a1, clinics.b1, elsewhere(clinics.a1)):
        multipart = {**bearer(token), "Accept": OHIF_ACCEPT}
        for headers in ({}, bearer(token), bearer("x.y.z"), multipart):
            seen.append(http.get(frame_url(served, inst), headers=headers))
            for url in metadata_urls(served, inst):
                seen.append(http.get(url, headers=headers))
    seen.append(http.get(frame_url(served, clinics.a1, "99"), headers=bearer(token)))
    seen.append(http.options(frame_url(served, clinics.a1), headers={"Origin": VIEWER}))
    seen.append(http.get(f"{served.base}/metrics"))
    assert {r.status_code for r in seen} >= {200, 204, 400, 401, 404}
    everything = "\n".join(f"{r.headers}\n{r.text}" for r in seen) + caplog.text
    assert secret not in everything and access_key not in everything
    assert repr(secret) not in repr(served.settings)


def test_redirects_with_auth_are_short_lived_single_object_and_private(
    clinics: Clinics, provider: IdentityProvider
) -> None:
    with pytest.raises(ConfigError, match="FRAMECDN_PRESIGN_WINDOW"):
        auth_settings(clinics, provider, delivery="redirect")  # the default window: an hour
    settings = auth_settings(clinics, provider, delivery="redirect", presign_window_seconds=120)
    with run_origin(settings) as origin, httpx.Client(timeout=10) as client:
        response = client.get(
            frame_url(origin, clinics.a1, "2"),
            headers={**bearer(provider.token(site="a")), "Accept": SINGLE},
        )
        assert response.status_code == 307
        location = httpx.URL(response.headers["location"])
        key = KeyLayout(f"{clinics.base.prefix}/a").frame_of(clinics.a1.index, 2)
        assert location.path == f"/{settings.bucket}/{key}"
        assert int(location.params["X-Amz-Expires"]) <= 240
        assert response.headers["cache-control"].startswith("private")
        assert settings.aws_secret_access_key not in str(response.headers)
        # The access key id is in the URL by SigV4's design (it names the key, it is no secret).
        assert location.params["X-Amz-Credential"].startswith(f"{settings.aws_access_key_id}/")
        assert client.get(str(location)).content == clinics.a1.frames[1]
        assert client.get(frame_url(origin, clinics.a1, "2")).status_code == 401


# --- start, settings, pure parts ------------------------------------------------------


def test_loud_warning_when_open_on_the_network(
    clinics: Clinics, provider: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="framecdn.origin")
    create_app(clinics.base.with_overrides(host="0.0.0.0"))
    assert "authentication is OFF" in caplog.text and "0.0.0.0" in caplog.text
    caplog.clear()
    create_app(clinics.base.with_overrides(host="127.0.0.1"))
    create_app(auth_settings(clinics, provider, host="0.0.0.0"))
    assert "authentication is OFF" not in caplog.text


def test_settings_refuse_what_auth_cannot_work_with(
    clinics: Clinics, provider: IdentityProvider
) -> None:
    base = clinics.base
    with pytest.raises(ConfigError, match="needs FRAMECDN_AUTH_JWKS_URL"):
        base.with_overrides(auth=True, cors_origins=(VIEWER,))
    with pytest.raises(ConfigError, match="FRAMECDN_AUTH_ISSUER and FRAMECDN_AUTH_AUDIENCE"):
        base.with_overrides(auth=True, cors_origins=(VIEWER,), auth_jwt_secret=HS_SECRET)
    with pytest.raises(ConfigError, match="CORS_ORIGINS='\\*' is refused"):
        auth_settings(clinics, provider, cors_origins=("*",))
    with pytest.raises(ConfigError, match="FRAMECDN_AUTH_UPSTREAM_SITE"):
        auth_settings(clinics, provider, auth_upstream_site="c")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        auth_settings(clinics, provider, auth_jwt_secret="short")
    with pytest.raises(ConfigError, match="FRAMECDN_AUTH_SITES"):
        Settings.from_env({"FRAMECDN_AUTH_SITES": "a,../b"})
    with pytest.raises(ConfigError, match="names a site twice"):
        Settings.from_env({"FRAMECDN_AUTH_SITES": "a,a=x"})
    sites = Settings.from_env({"FRAMECDN_AUTH_SITES": "a, b=clinics/b "}).auth_sites
    assert sites == ("a", "b=clinics/b")


def test_api_keys_file_is_checked_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("fcdn_plaintext-key a someone\n")
    with pytest.raises(ConfigError, match=":1: not `sha256:"):
        ApiKeys.load(str(path))
    with pytest.raises(ConfigError, match="No such file"):
        ApiKeys.load(str(tmp_path / "absent"))


def test_query_token_is_cut_and_every_other_parameter_kept_as_sent() -> None:
    assert strip_query_token(b"a=1&access_token=T%2B&b=%2C") == (b"a=1&b=%2C", "T+")
    assert strip_query_token(b"access_token=T") == (b"", "T")
    assert strip_query_token(b"x=access_token") == (b"x=access_token", None)
    assert strip_query_token(b"") == (b"", None)


def test_cache_control_made_private() -> None:
    assert privatise("public, max-age=300") == "private, max-age=300"
    assert privatise("max-age=5, s-maxage=60") == "private, max-age=5"
    assert privatise("no-store") == "no-store"
    assert shared_max_age("public, max-age=300, s-maxage=60") == 60
    assert shared_max_age("private, max-age=300") is None


def test_algorithms_follow_the_key() -> None:
    assert allowed_algorithms({"kty": "RSA"})[0] == "RS256"
    assert "HS256" not in allowed_algorithms({"kty": "RSA"})
    assert allowed_algorithms({"kty": "EC", "crv": "P-256"}) == ("ES256",)
    assert allowed_algorithms({"kty": "RSA", "alg": "RS512"}) == ("RS512",)
    assert allowed_algorithms({"kty": "oct"}) == ()
    assert allowed_algorithms({"kty": "RSA", "alg": "HS256"}) == ()


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0], max_callers=2)
    assert [limiter.take("a") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.take("b") == 0
    now[0] += 0.5
    assert limiter.take("a") == 0 and limiter.take("a") == 1
    small = RateLimiter(1.0, 1, clock=lambda: now[0], max_callers=1)
    assert small.take("a") == 0 and small.take("a") == 1
    small.take("b")  # "a" is forgotten (an LRU of 1): it starts full again
    assert small.take("a") == 0


def test_the_app_never_sees_the_query_token() -> None:
    """Whatever a handler (or uvicorn's own access log) reads of the query has no token."""
    from framecdn.origin.auth import AccessControl, AccessMiddleware
    from framecdn.origin.storage import ObjectStore

    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["query"] = scope["query_string"]

    settings = Settings(aws_access_key_id="k", aws_secret_access_key="s" * 8)  # never used
    middleware = AccessMiddleware(app, AccessControl(settings), ObjectStore(settings))
    scope = {"type": "http", "path": "/dicom-web/studies/1.2/metadata", "method": "GET",
             "headers": [], "query_string": b"includefield=all&access_token=SECRET"}
    asyncio.run(middleware(scope, None, None))
    assert seen["query"] == b"includefield=all" and scope["query_string"] == seen["query"]


def _serve_env(s3_store: EmbeddedS3, clinics: Clinics, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment(prefix=clinics.base.prefix))
    env.update({"FRAMECDN_AUTH": "on", "FRAMECDN_AUTH_SITES": "a,b",
                "FRAMECDN_CORS_ORIGINS": VIEWER, **extra})
    return env


def test_serve_refuses_an_unreadable_keys_file_in_one_line(
    s3_store: EmbeddedS3, clinics: Clinics, tmp_path: Path
) -> None:
    import subprocess
    import sys

    env = _serve_env(s3_store, clinics, FRAMECDN_AUTH_API_KEYS_FILE=str(tmp_path / "absent"))
    result = subprocess.run(
        [sys.executable, "-m", "framecdn", "serve", "--port", "1"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == ConfigError.exit_code
    assert result.stderr.strip().splitlines() == [
        f"framecdn serve: FRAMECDN_AUTH_API_KEYS_FILE={str(tmp_path / 'absent')!r}: "
        "No such file or directory"
    ]


def test_serve_workers_check_credentials_from_the_environment(
    s3_store: EmbeddedS3, clinics: Clinics
) -> None:
    """`framecdn serve` with two workers: each reads the auth settings and the keys file."""
    import sys

    from tests.origin_fixtures import free_port
    from tests.processes import running

    port = free_port()
    env = _serve_env(s3_store, clinics, FRAMECDN_AUTH_API_KEYS_FILE=str(clinics.api_keys_file))
    command = [sys.executable, "-m", "framecdn", "serve", "--port", str(port), "--workers", "2"]
    with running(command, env=env) as process, httpx.Client(timeout=10) as client:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None
            try:
                if client.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve never answered"
                time.sleep(0.2)
        root = RunningOrigin(base, base + "/dicom-web", None, clinics.base)  # type: ignore[arg-type]
        url = frame_url(root, clinics.b1)
        single = {"Accept": SINGLE, **bearer(clinics.key_b)}
        answers = [client.get(url, headers=single) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6, answers[0].text
        assert all(a.content == clinics.b1.frames[0] for a in answers)
        assert {client.get(url).status_code for _ in range(6)} == {401}
        other_site = bearer(clinics.key_a)
        assert {client.get(url, headers=other_site).status_code for _ in range(6)} == {404}
