"""pytest fixtures for the browser tests (test modules load them with ``pytest_plugins``).

Session-wide: the npm packages and a Chromium that starts, the built Cornerstone page, the
unpacked OHIF viewer. Each is skipped with its reason when it cannot be had, or fails
under CI (see ``tests/browser_fixtures.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_fixtures import (
    BrowserUnavailable,
    Toolchain,
    build_cornerstone_page,
    prepare_toolchain,
    unavailable,
    unpack_ohif,
)


@pytest.fixture(scope="session")
def browser_toolchain(tmp_path_factory: pytest.TempPathFactory) -> Toolchain:
    try:
        return prepare_toolchain(tmp_path_factory.mktemp("chromium-probe"))
    except BrowserUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def cornerstone_page(browser_toolchain: Toolchain) -> Path:
    try:
        return build_cornerstone_page()
    except BrowserUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def ohif_dist(browser_toolchain: Toolchain) -> Path:
    try:
        return unpack_ohif()
    except BrowserUnavailable as exc:
        unavailable(str(exc))
