"""OHIF 3.13 in Chromium against framecdn with access control on: a bearer token, and a bad one.

OHIF 3.13's DICOMweb data source takes its ``Authorization`` header from its user
authentication service, which an OIDC login fills or, as here, the viewer URL's ``token``
parameter (OHIF then drops it from the address bar). The token is an RS256 access token
shaped like Keycloak's, from the test realm's JWKS (tests/auth_fixtures.py); the origin
checks it on every request, and behind the shipped nginx (accel mode) nginx asks the origin
about every request too (``auth_request``) before answering from its cache.

With a good token: every framecdn request answered 2xx (the CORS preflights the header now
causes included), each frame of the instance fetched once while scrolling, the image shown,
no error. With a token the realm never signed: OHIF says so and shows no image, and every
framecdn request other than the preflights answered 401; no frame, thumbnail or rendered
image left framecdn.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.synthetic import write_tomosynthesis
from tests.auth_fixtures import (
    AUDIENCE,
    CACHE_SECRET,
    CLIENT_ID,
    IdentityProvider,
    identity_provider,
    rsa_key,
)
from tests.browser_fixtures import (
    Toolchain,
)
from tests.origin_fixtures import Expected, ingest
from tests.test_browser_ohif import (
    TOMOSYNTHESIS_FRAMES,
    ViewerRun,
    check_viewer,
    open_in_ohif,
)

pytest_plugins = ["tests.browser_plugin"]



@pytest.fixture(scope="module")
def provider() -> IdentityProvider:
    with identity_provider() as realm:
        yield realm


@pytest.fixture(scope="module")
def auth_on(s3_store: EmbeddedS3, provider: IdentityProvider) -> Settings:
    return s3_store.settings(
        prefix=f"ohif-auth-{uuid.uuid4().hex[:10]}",
        auth=True,
        auth_jwks_url=provider.jwks_url,
        auth_issuer=provider.url,
        auth_audience=(AUDIENCE,),
        auth_authorized_parties=(CLIENT_ID,),
        cache_secret=CACHE_SECRET,
        cors_origins=("http://127.0.0.1",),  # each case allows its own viewer's origin
    )


@pytest.fixture(scope="module")
def tomosynthesis(auth_on: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    path = tmp_path_factory.mktemp("ohif-auth") / "tomo.dcm"
    write_tomosynthesis(path, frames=TOMOSYNTHESIS_FRAMES, rows=512, columns=400, seed=8)
    return ingest(path, auth_on)


def open_with_token(
    toolchain: Toolchain, dist: Path, settings: Settings, mode: str, instance: Expected,
    token: str, work: Path,
) -> ViewerRun:
    return open_in_ohif(toolchain, dist, settings, mode, instance, work,
                        work / f"ohif-auth-{mode}.png", token=token)


@pytest.mark.parametrize("mode", ["stream", "accel"])
def test_ohif_with_a_bearer_token_opens_and_scrolls(
    browser_toolchain: Toolchain, ohif_dist: Path, auth_on: Settings, tomosynthesis: Expected,
    provider: IdentityProvider, mode: str, tmp_path: Path,
) -> None:
    token = provider.token()
    run = open_with_token(browser_toolchain, ohif_dist, auth_on, mode, tomosynthesis, token,
                          tmp_path)
    check_viewer(run)
    exchanges = run.browser.to(run.framecdn)
    assert any(x.is_preflight for x in exchanges), "the Authorization header needs preflights"
    sent = [x for x in exchanges if not x.is_preflight]
    assert all(x.header("authorization") == f"Bearer {token}" for x in sent)


def test_ohif_with_a_wrong_token_shows_no_image_and_gets_401s(
    browser_toolchain: Toolchain, ohif_dist: Path, auth_on: Settings, tomosynthesis: Expected,
    provider: IdentityProvider, tmp_path: Path,
) -> None:
    forged = provider.token(rsa_key("not-the-realms"))  # signed by a key the realm never had
    run = open_with_token(browser_toolchain, ohif_dist, auth_on, "stream", tomosynthesis,
                          forged, tmp_path)
    browser = run.browser
    browser.raise_for_error()
    exchanges = [x for x in browser.to(run.framecdn) if not x.is_preflight]
    assert exchanges, "OHIF asked framecdn"
    assert {x.status for x in exchanges} == {401}, [str(x) for x in exchanges]
    assert all(x.header("authorization") == f"Bearer {forged}" for x in exchanges)
    images = [x for x in exchanges
              if any(part in x.url for part in ("/frames/", "/thumbnail", "/rendered"))]
    assert all(not x.ok for x in images)
    page = str(run.value("page_text"))
    canvas = run.value("canvas")
    assert not (isinstance(canvas, dict) and canvas["max"] > canvas["min"]), "no image shown"
    assert run.value("error_toasts") or "not available" in page or "rror" in page, page
