"""Shared fixtures: one real SeaweedFS store per test session, a fresh key prefix per test.

Every test gets its own prefix in the shared bucket, the way several clinics
share one bucket in production, so tests never see each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from framecdn.embedded_s3 import Credentials, EmbeddedS3
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import make_client

#: A second key of the session store that may list, write and delete but not read
#: (GetObject and GetObjectTagging are denied): what maintenance does on denied reads.
NO_READ = Credentials("FRAMECDNNOREAD", "no-read-secret-for-tests")


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    """A real SeaweedFS S3 server with signature checking, for the whole session."""
    no_read = {
        "name": "no-read",
        "credentials": [{"accessKey": NO_READ.access_key, "secretKey": NO_READ.secret_key}],
        "actions": ["List", "Write"],
    }
    store = EmbeddedS3(
        tmp_path_factory.mktemp("seaweedfs"), bucket="framecdn-test", extra_identities=[no_read]
    )
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def settings(s3_store: EmbeddedS3) -> Settings:
    """Settings pointing at the session store, under a prefix of this test's own."""
    return s3_store.settings(prefix=f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def module_settings(s3_store: EmbeddedS3, request: pytest.FixtureRequest) -> Settings:
    """Settings pointing at the session store, under a prefix of this test module's own
    (for data a whole module shares; a module may define its own to change settings)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return s3_store.settings(prefix=f"{module}-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def s3_client(s3_store: EmbeddedS3):
    return make_client(s3_store.settings())


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix``."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def own_bucket(s3_store: EmbeddedS3, settings: Settings) -> Settings:
    """Settings for a bucket of this test's own (lifecycle rules are bucket-wide)."""
    bucket = f"own-{uuid.uuid4().hex[:12]}"
    s3_store.ensure_bucket(bucket)
    return settings.with_overrides(bucket=bucket)


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, s3_store: EmbeddedS3) -> int:
    """Run a ``framecdn`` subcommand in-process (through ``main``), set up for the session store."""
    from framecdn.cli import main

    for name, value in s3_store.environment().items():
        monkeypatch.setenv(name, value)
    return main(argv)


@pytest.fixture
def bucket(settings: Settings) -> Bucket:
    """The session store's bucket, as the write side sees it."""
    return Bucket.from_settings(settings)


@pytest.fixture
def orthanc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc with the DICOMweb plugin and an empty database; skipped without
    Debian's orthanc packages, except under CI, where a missing server is a failure.

    Series never become stable (no Stable* changes in the feed) unless a test asks, with
    ``@pytest.mark.parametrize("orthanc", [{"stable_age": 1}], indirect=True)``.
    """
    import os

    from tests.orthanc_fixtures import OrthancServer, missing_reason

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)
    options = {"stable_age": 3600, **getattr(request, "param", {})}
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), **options) as server:
        yield server
