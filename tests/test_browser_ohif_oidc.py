"""OHIF's own OpenID Connect login against a real OpenID Provider, then framecdn with auth on.

Issue #10 asks that OHIF's built-in OIDC login "just work". Here nothing is played: the
provider is panva's certified node-oidc-provider (``tests/browser/idp.mjs``, pinned in
``tests/browser/package-lock.json``) on loopback, with one public client ``ohif`` (PKCE,
authorization code) and RS256 JWT access tokens for the audience ``framecdn`` carrying the
account's ``site``; OHIF 3.13 (the built ``@ohif/app``) has an ``oidc`` block in its
app-config and no token anywhere else; framecdn's origin verifies the tokens with the
provider's JWKS (``FRAMECDN_AUTH_JWKS_URL``, ``_ISSUER``, ``_AUDIENCE``,
``_AUTHORIZED_PARTIES``) and serves two sites, ``a`` and ``b``, from one bucket.

Chromium opens ``/viewer?StudyInstanceUIDs=S``: OHIF sends it to the provider's login
form, the test signs in (and consents), the provider redirects to OHIF's ``/callback``,
OHIF exchanges the code (a CORS request to the token endpoint) and opens the study. What is
checked comes from the browser's own network events: the ``Authorization`` header it sent
to framecdn is decoded and its signature checked with the provider's JWKS.

- ``reader-a`` (site ``a``) sees study S of site ``a``: every framecdn request answered 2xx
  (preflights too), each with a bearer JWT from the provider, every frame fetched while
  scrolling, the image shown, no error.
- ``reader-b`` (site ``b``) opening S gets what a study that does not exist gets
  (docs/security.md: scopes): no match for the study, its metadata 404, no frame sent,
  no image.
- With the origin expecting another audience, the same provider's tokens are refused
  (401 ``invalid_token``) and OHIF shows no image.

One provider and one OHIF server per module; each case has its own origin (the
audience case needs other settings) and its own browser profile, so each logs in afresh.
"""

from __future__ import annotations

import contextlib
import json
import select
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from pydicom.uid import generate_uid

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from framecdn.viewer import OpenIdClient, study_url
from tests.browser_fixtures import (
    BROWSER_DIR,
    OHIF_TOUR_SEEN,
    BrowserRun,
    BrowserUnavailable,
    Exchange,
    ServedFramecdn,
    Toolchain,
    ohif_app_config,
    serve_directory,
    serve_framecdn,
    unavailable,
)
from tests.origin_fixtures import Expected, ingest
from tests.processes import running
from tests.test_browser_ohif import (
    STEP_INDEX,
    STEPS,
    TOMOSYNTHESIS_FRAMES,
    ViewerRun,
    check_viewer,
)

pytest_plugins = ["tests.browser_plugin"]

IDP_SCRIPT = BROWSER_DIR / "idp.mjs"
CLIENT_ID = "ohif"
AUDIENCE = "framecdn"
SITES_OF_USERS = {"reader-a": "a", "reader-b": "b"}
START_TIMEOUT = 30


@dataclass(frozen=True)
class OpenIdProvider:
    issuer: str
    jwks_uri: str


@contextlib.contextmanager
def openid_provider(toolchain: Toolchain, viewer: str, log: Path) -> Iterator[OpenIdProvider]:
    """``idp.mjs`` for the viewer at ``viewer`` until the block ends (killed even on failure);
    ready once its discovery document answers."""
    users = [f"--user={user}={site}" for user, site in SITES_OF_USERS.items()]
    argv = [toolchain.node, str(IDP_SCRIPT), "--viewer", viewer, "--audience", AUDIENCE, *users]
    with log.open("w") as stderr, running(argv, cwd=BROWSER_DIR, stderr=stderr) as process:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line:
            process.kill()
            raise BrowserUnavailable(f"the OpenID provider did not start:\n{log.read_text()}")
        issuer = json.loads(line)["issuer"]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                answer = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=5)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BrowserUnavailable("the OpenID provider's discovery document never answered")
            time.sleep(0.1)
        discovery = answer.json()
        assert discovery["issuer"] == issuer
        yield OpenIdProvider(issuer, discovery["jwks_uri"])


@dataclass
class Viewer:
    """OHIF served once for the module; its app-config is set per case."""

    url: str
    dist: Path
    overrides: dict[str, bytes]


@pytest.fixture(scope="module")
def viewer(ohif_dist: Path) -> Iterator[Viewer]:
    overrides: dict[str, bytes] = {}
    with serve_directory(ohif_dist, spa=True, overrides=overrides) as url:
        yield Viewer(url, ohif_dist, overrides)


@pytest.fixture(scope="module")
def provider(
    browser_toolchain: Toolchain, viewer: Viewer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenIdProvider]:
    log = tmp_path_factory.mktemp("idp") / "idp.log"
    try:
        with openid_provider(browser_toolchain, viewer.url, log) as found:
            yield found
    except BrowserUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def clinics(s3_store: EmbeddedS3, provider: OpenIdProvider) -> Settings:
    """Auth on, sites ``a`` and ``b``, the provider's keys (framecdn finds them by URL)."""
    return s3_store.settings(
        prefix=f"ohif-oidc-{uuid.uuid4().hex[:10]}",
        auth=True,
        auth_sites=("a", "b"),
        auth_jwks_url=provider.jwks_uri,
        auth_issuer=provider.issuer,
        auth_audience=(AUDIENCE,),
        auth_authorized_parties=(CLIENT_ID,),
        cors_origins=("http://127.0.0.1",),  # serve_framecdn allows the viewer's origin
    )


@pytest.fixture(scope="module")
def study_of_a(clinics: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    path = tmp_path_factory.mktemp("ohif-oidc") / "tomo.dcm"
    write_tomosynthesis(path, frames=TOMOSYNTHESIS_FRAMES, rows=512, columns=400, seed=9)
    return ingest(path, clinics.with_overrides(prefix=f"{clinics.prefix}/a"))


#: The provider's development login pages import this font, which this network cannot
#: reach; Chromium reports it (and the provider's missing favicon) as console errors.
DEV_PAGE_FONT = "https://fonts.googleapis.com/css?family=Roboto:400,100"


def login_steps(user: str) -> list[dict[str, Any]]:
    """The provider's sign-in form (any password), then its consent page if it asks."""
    return [
        {"fill": {"selector": "input[name=login]", "value": user}, "timeoutMs": 60000},
        {"fill": {"selector": "input[name=password]", "value": "not checked"}},
        {"click": {"selector": "button[type=submit]"}},
        {"click": {"selector": "button:has-text('Continue')", "optional": True},
         "timeoutMs": 10000},
    ]


LOGIN_STEPS = len(login_steps("anyone"))


@dataclass
class LoggedInRun(ViewerRun):
    """A viewer run whose steps start with the login (the named steps come after it)."""

    def value(self, name: str) -> object:
        return self.browser.step_value(LOGIN_STEPS + STEP_INDEX[name], default=None)


def without_the_providers_pages(run: BrowserRun, provider: OpenIdProvider) -> BrowserRun:
    """The run without the resource errors of the provider's own login pages: not OHIF's."""

    def providers(event: dict[str, Any]) -> bool:
        where = event.get("location", {}).get("url", "")
        return (event["event"] == "console" and event["text"].startswith("Failed to load")
                and (where == DEV_PAGE_FONT or where.startswith(f"{provider.issuer}/")))

    events = [event for event in run.events if not providers(event)]
    return BrowserRun(events, run.exchanges, run.returncode)


@contextlib.contextmanager
def logged_in(
    toolchain: Toolchain, viewer: Viewer, provider: OpenIdProvider, settings: Settings,
    instance: Expected, user: str, work: Path,
) -> Iterator[tuple[LoggedInRun, ServedFramecdn]]:
    """A fresh Chromium opens ``instance``'s study in OHIF, signs in as ``user`` when OHIF
    sends it to the provider, then looks, scrolls and takes a screenshot; yields what it saw
    while the origin still runs."""
    screenshot = work / f"ohif-oidc-{user}.png"
    with serve_framecdn("stream", settings, viewer.url, work) as framecdn:
        oidc = OpenIdClient(authority=provider.issuer, client_id=CLIENT_ID)
        viewer.overrides["/app-config.js"] = ohif_app_config(viewer.dist, framecdn.root,
                                                             oidc=oidc)
        steps = login_steps(user) + [step for _, step in STEPS]
        steps.append({"screenshot": {"path": str(screenshot)}})
        browser = toolchain.run(study_url(viewer.url, instance.study), steps, timeout=120,
                                user_data_dir=work / "profile", init_script=OHIF_TOUR_SEEN)
        browser = without_the_providers_pages(browser, provider)
        yield LoggedInRun(browser, framecdn.root, instance, screenshot), framecdn


def bearer_claims(exchange: Exchange, provider: OpenIdProvider) -> dict[str, Any]:
    """The claims of the bearer JWT the browser sent, its signature checked with the
    provider's published keys (what the page says is not trusted)."""
    header = exchange.header("authorization") or ""
    assert header.startswith("Bearer "), f"no bearer token: {exchange}"
    token = header.removeprefix("Bearer ")
    key = jwt.PyJWKClient(provider.jwks_uri).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE,
                                        issuer=provider.issuer)
    return claims


def sent_to(run: ViewerRun) -> list[Exchange]:
    """The requests (not preflights) the browser sent to framecdn; there are some."""
    exchanges = [x for x in run.browser.to(run.framecdn) if not x.is_preflight]
    assert exchanges, "OHIF asked framecdn nothing:\n" + run.browser.transcript()
    return exchanges


def shows_no_image(run: ViewerRun) -> bool:
    canvas = run.value("canvas")
    return not (isinstance(canvas, dict) and canvas["max"] > canvas["min"])


def test_ohif_signs_in_at_the_provider_and_opens_its_sites_study(
    browser_toolchain: Toolchain, viewer: Viewer, provider: OpenIdProvider, clinics: Settings,
    study_of_a: Expected, tmp_path: Path,
) -> None:
    with logged_in(browser_toolchain, viewer, provider, clinics, study_of_a, "reader-a",
                   tmp_path) as (run, _):
        pass
    check_viewer(run)  # all 2xx (preflights too), every frame once, image shown, no error
    at_provider = run.browser.to(provider.issuer)
    (authorize,) = [x for x in at_provider if urlsplit(x.url).path == "/auth"]
    query = parse_qs(urlsplit(authorize.url).query)
    assert query["client_id"] == [CLIENT_ID] and query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]  # PKCE
    (exchange,) = [x for x in at_provider if urlsplit(x.url).path == "/token"]
    assert exchange.method == "POST" and exchange.ok, str(exchange)  # from the page: CORS
    assert exchange.response_header("access-control-allow-origin") == viewer.url

    exchanges = run.browser.to(run.framecdn)
    assert any(x.is_preflight for x in exchanges), "the Authorization header needs preflights"
    claims = [bearer_claims(x, provider) for x in sent_to(run)]
    assert {(c["sub"], c["site"], c["client_id"]) for c in claims} == {("reader-a", "a", "ohif")}
    assert len({c["jti"] for c in claims}) == 1, "one login, one access token"
    assert not [x.url for x in exchanges if "access_token" in x.url]


def test_another_sites_reader_gets_what_a_missing_study_gets(
    browser_toolchain: Toolchain, viewer: Viewer, provider: OpenIdProvider, clinics: Settings,
    study_of_a: Expected, tmp_path: Path,
) -> None:
    """reader-b (site b) opens site a's study: no image, nothing of it leaves framecdn, and
    each request its browser sent (and the study's metadata and a frame, asked with the
    same token) is answered exactly as for a study that does not exist."""
    with logged_in(browser_toolchain, viewer, provider, clinics, study_of_a, "reader-b",
                   tmp_path) as (run, framecdn):
        run.browser.raise_for_error()
        sent = sent_to(run)
        claims = [bearer_claims(x, provider) for x in sent]
        assert {(c["sub"], c["site"]) for c in claims} == {("reader-b", "b")}
        instance = study_of_a
        asked = {x.url: x.header("authorization") or "" for x in sent}
        seen = {x.url: x.status for x in sent}  # what the browser got
        series = f"{framecdn.root}/studies/{instance.study}/series/{instance.series}"
        for url in (f"{framecdn.root}/studies/{instance.study}/metadata", f"{series}/metadata",
                    f"{series}/instances/{instance.sop}/frames/1"):
            asked.setdefault(url, sent[0].header("authorization") or "")
        missing = generate_uid()
        with httpx.Client(timeout=30) as client:
            for url, authorization in asked.items():
                headers = {"Authorization": authorization, "Accept": "*/*"}
                answer = client.get(url, headers=headers)
                elsewhere = client.get(url.replace(instance.study, missing), headers=headers)
                assert answer.status_code == elsewhere.status_code, url
                assert seen.get(url, answer.status_code) == answer.status_code, url
                assert answer.content == elsewhere.content.replace(
                    missing.encode(), instance.study.encode()), url
                if "/metadata" in url or "/frames/" in url:
                    assert answer.status_code == 404, (url, answer.status_code)
                else:  # a QIDO-RS search: it matches nothing
                    assert answer.status_code == 204 or answer.json() == [], (url, answer.text)
    images = [x for x in sent if any(p in x.url for p in ("/frames/", "/thumbnail", "/rendered"))]
    assert not [str(x) for x in images if x.ok]
    assert shows_no_image(run), run.value("canvas")


def test_a_token_for_another_audience_is_refused(
    browser_toolchain: Toolchain, viewer: Viewer, provider: OpenIdProvider, clinics: Settings,
    study_of_a: Expected, tmp_path: Path,
) -> None:
    """The same provider's token, but the origin serves another audience: 401 everywhere,
    and OHIF says so (no image, no login loop)."""
    other = clinics.with_overrides(auth_audience=("another-service",))
    with logged_in(browser_toolchain, viewer, provider, other, study_of_a, "reader-a",
                   tmp_path) as (run, _):
        pass
    run.browser.raise_for_error()
    sent = sent_to(run)
    assert {bearer_claims(x, provider)["aud"] for x in sent} == {AUDIENCE}
    assert {x.status for x in sent} == {401}, [str(x) for x in sent]
    assert all('error="invalid_token"' in (x.response_header("www-authenticate") or "")
               for x in sent)
    assert shows_no_image(run), run.value("canvas")
    logins = [x for x in run.browser.to(provider.issuer) if urlsplit(x.url).path == "/auth"]
    assert len(logins) == 1, "OHIF shows the error; it does not send the user to log in again"
