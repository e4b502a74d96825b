"""Access control on what the origin proxies to the upstream PACS, with real tokens.

A real Orthanc holds a study the bucket does not; the origin (auth on, sites ``a`` and
``b``) has it as upstream, which belongs to site ``a`` (``FRAMECDN_AUTH_UPSTREAM_SITE``).
The token decides: a caller of site ``a`` (or of all sites) reaches the PACS, a caller of
site ``b`` gets for the PACS's study exactly what a study that exists nowhere gets, and a
``studies`` claim narrows what even site ``a`` may open there. Searches follow the same
rule. A relay in front of Orthanc counts what reached it: refused callers never do.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.auth_fixtures import Clinics, IdentityProvider, auth_settings, bearer
from tests.origin_fixtures import RunningOrigin, run_origin
from tests.orthanc_fixtures import RelayProxy
from tests.upstream_fixtures import Upstream, populated_orthanc, upstream_settings

pytest_plugins = ["tests.auth_plugin"]

JSON = "application/dicom+json"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with populated_orthanc(
        tmp_path_factory.mktemp("auth-upstream-data"), tmp_path_factory.mktemp("orthanc"),
        frames=2,
    ) as populated:
        yield populated


@pytest.fixture(scope="module")
def relay(upstream: Upstream) -> Iterator[RelayProxy]:
    with RelayProxy(upstream.orthanc.http_port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def served(
    clinics: Clinics, provider: IdentityProvider, upstream: Upstream, relay: RelayProxy
) -> Iterator[RunningOrigin]:
    settings = upstream_settings(
        auth_settings(clinics, provider, auth_upstream_site="a"), upstream.orthanc,
        root=f"{relay.url}/dicom-web",
    )
    with run_origin(settings) as origin:
        yield origin


def paths_of(upstream: Upstream) -> list[tuple[str, str]]:
    """What a viewer asks of a study the bucket lacks: searches, metadata, a frame."""
    first = upstream.instances[0]
    return [
        (f"/studies?StudyInstanceUID={upstream.study}", JSON),
        (f"/studies/{upstream.study}/series", JSON),
        (f"/studies/{upstream.study}/series/{first.key.series}/metadata", JSON),
        (f"{first.path_below_root}/frames/1", FRAMES),
    ]


def nowhere(path: str, upstream: Upstream) -> str:
    """The same request for a study, series and instance that exist nowhere."""
    first = upstream.instances[0]
    for uid in (upstream.study, first.key.series, first.key.instance):
        path = path.replace(uid, generate_uid())
    return path


@pytest.mark.parametrize("site", ["a", "*"])
def test_callers_of_the_pacs_site_read_the_pacs(
    served: RunningOrigin, provider: IdentityProvider, upstream: Upstream, relay: RelayProxy,
    site: str,
) -> None:
    headers = bearer(provider.token(site=site))
    reached = relay.count(upstream.study)
    with httpx.Client(base_url=served.root, timeout=60) as http:
        found = http.get(f"/studies?StudyInstanceUID={upstream.study}",
                         headers={**headers, "Accept": JSON}).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [upstream.study]
        frame = http.get(f"{upstream.instances[0].path_below_root}/frames/1",
                         headers={**headers, "Accept": FRAMES})
        assert frame.status_code == 200
        assert upstream.instances[0].frames[0] in frame.content
    assert relay.count(upstream.study) > reached  # from the PACS: the bucket lacks it


def test_another_sites_caller_gets_what_a_missing_study_gets(
    served: RunningOrigin, provider: IdentityProvider, upstream: Upstream, relay: RelayProxy
) -> None:
    headers = bearer(provider.token(site="b"))
    reached = relay.count(upstream.study)
    with httpx.Client(base_url=served.root, timeout=60) as http:
        for path, accept in paths_of(upstream):
            hidden = http.get(path, headers={**headers, "Accept": accept})
            missing = http.get(nowhere(path, upstream), headers={**headers, "Accept": accept})
            assert hidden.status_code in (200, 404), (path, hidden.text)
            assert (hidden.status_code, hidden.content) == (
                missing.status_code, missing.content
            ), path
            if hidden.status_code == 200:  # a search: it found nothing
                assert hidden.json() == [], path
    assert relay.count(upstream.study) == reached  # the PACS was never asked


def test_a_studies_claim_narrows_the_pacs_too(
    served: RunningOrigin, provider: IdentityProvider, upstream: Upstream
) -> None:
    elsewhere = generate_uid()
    headers = bearer(provider.token(site="a", studies=[elsewhere]))
    with httpx.Client(base_url=served.root, timeout=60) as http:
        for path, accept in paths_of(upstream):
            hidden = http.get(path, headers={**headers, "Accept": accept})
            missing = http.get(nowhere(path, upstream), headers={**headers, "Accept": accept})
            assert (hidden.status_code, hidden.content) == (
                missing.status_code, missing.content
            ), path


def test_without_a_valid_token_nothing_is_proxied(
    served: RunningOrigin, provider: IdentityProvider, upstream: Upstream, relay: RelayProxy
) -> None:
    forged = provider.token(site="a")[:-4] + "AAAA"
    reached = relay.count(upstream.study)
    with httpx.Client(base_url=served.root, timeout=60) as http:
        for path, accept in paths_of(upstream):
            for headers in ({}, bearer(forged)):
                answer = http.get(path, headers={**headers, "Accept": accept})
                assert answer.status_code == 401, (path, answer.text)
                assert upstream.host_port not in answer.text
    assert relay.count(upstream.study) == reached
