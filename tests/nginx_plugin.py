"""pytest fixtures for the tests of the shipped nginx (test modules load them with
``pytest_plugins``); the harness itself, free of pytest, is ``tests/nginx_fixtures.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.nginx_fixtures import RunningNginx, nginx_binary_or_none, run_nginx
from tests.origin_fixtures import RunningOrigin


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """The nginx to run; skip without one, but fail under CI (a missing server is a fault)."""
    found = nginx_binary_or_none()
    if found is None:
        reason = "nginx binary not found at /usr/sbin/nginx or on PATH (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def stream_nginx(
    nginx_binary: str, stream_origin: RunningOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNginx]:
    """The shipped nginx in front of the test module's own ``stream_origin`` fixture."""
    with run_nginx(
        nginx_binary, tmp_path_factory.mktemp("nginx-stream"), stream_origin.base,
        stream_origin.settings,
    ) as proxy:
        yield proxy
