"""A real Orthanc as the upstream, a fill service in-process, and origins pointed at them.

``module_orthanc`` starts one Orthanc (Debian's, with the DICOMweb plugin) for a test
module, skipped without the packages and failing under CI, as ``tests/conftest.py``'s
``orthanc`` fixture does. :func:`running_fill` runs the fill service (its HTTP face and
its :class:`~framecdn.ingest.fill.Filler`) in threads of the test process, so a test can
wait for it to go idle and read its results.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from framecdn.framestore.config import Settings
from framecdn.ingest.fill import Filler
from framecdn.ingest.fill_service import running_fill_service
from tests.orthanc_fixtures import OrthancServer, missing_reason


@contextlib.contextmanager
def orthanc_or_skip(directory: Path) -> Iterator[OrthancServer]:
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)
    with OrthancServer(directory, stable_age=3600) as server:
        yield server


def upstream_settings(
    settings: Settings, orthanc: OrthancServer, *, root: str | None = None, **overrides: object
) -> Settings:
    """``settings`` with Orthanc's DICOMweb root (or ``root``) as upstream, and its user."""
    return settings.with_overrides(
        upstream_url=root or orthanc.dicomweb_root,
        upstream_username=orthanc.username,
        upstream_password=orthanc.password,
        **overrides,
    )


@dataclass
class RunningFill:
    url: str
    filler: Filler

    def wait_idle(self, timeout: float = 120) -> None:
        assert self.filler.wait_idle(timeout), f"fills still running: {self.filler.status()}"


@contextlib.contextmanager
def running_fill(settings: Settings) -> Iterator[RunningFill]:
    """The fill service for ``settings`` (its upstream, bucket and prefix) on a free port."""
    with Filler(settings) as filler, running_fill_service(filler) as url:
        yield RunningFill(url, filler)
