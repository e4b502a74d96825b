"""pytest fixtures for the tests of access control (test modules load them with
``pytest_plugins``): the identity provider and the two clinics of ``tests/auth_fixtures.py``,
one of each per test module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from framecdn.embedded_s3 import EmbeddedS3
from tests.auth_fixtures import Clinics, IdentityProvider, identity_provider, two_clinics


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    with identity_provider() as realm:
        yield realm


@pytest.fixture(scope="module")
def clinics(s3_store: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Clinics:
    base = s3_store.settings(prefix=f"clinics-{uuid.uuid4().hex[:10]}")
    return two_clinics(base, tmp_path_factory.mktemp("clinics"))
