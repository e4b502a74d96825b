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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey
from framecdn.ingest.fill import Filler
from framecdn.ingest.fill_service import running_fill_service
from tests.dicom_factory import small_instance
from tests.origin_fixtures import RunningOrigin, pydicom_frames
from tests.orthanc_fixtures import OrthancServer, missing_reason

JSON = "application/dicom+json"
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


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


@dataclass
class Instance:
    key: InstanceKey
    path: Path
    frames: list[bytes]

    @property
    def path_below_root(self) -> str:
        key = self.key
        return f"/studies/{key.study}/series/{key.series}/instances/{key.instance}"


@dataclass
class Upstream:
    """An Orthanc holding one study: a series of two instances and a series of one."""

    orthanc: OrthancServer
    study: str
    instances: list[Instance]

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.orthanc.http_port}"

    def series(self) -> list[str]:
        return sorted({i.key.series for i in self.instances})


@contextlib.contextmanager
def populated_orthanc(
    folder: Path, orthanc_dir: Path, *, frames: int = 3, rows: int = 64, columns: int = 48
) -> Iterator[Upstream]:
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    instances = []
    for n, in_series in enumerate([series[0], series[0], series[1]]):
        sop = generate_uid()
        path = small_instance(
            folder / f"{n}.dcm", study=study, series=in_series, sop=sop, frames=frames,
            rows=rows, columns=columns, seed=n, PatientID="UP1", InstanceNumber=n + 1,
            SeriesNumber=1 if in_series == series[0] else 2,
        )
        instances.append(Instance(InstanceKey(study, in_series, sop), path, pydicom_frames(path)))
    with orthanc_or_skip(orthanc_dir) as orthanc:
        for instance in instances:
            orthanc.upload(instance.path)
        yield Upstream(orthanc, study, instances)


def metric(origin: RunningOrigin, name: str, **labels: str) -> float:
    """The sum of a counter's samples (``name``, without ``_total``) carrying ``labels``."""
    text = httpx.get(f"{origin.base}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_total" and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def first_part(answer: httpx.Response) -> bytes:
    """The payload of the first part of a multipart answer."""
    content_type = answer.headers["content-type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    part = answer.content.split(b"--" + boundary.encode())[1]
    _, _, payload = part.partition(b"\r\n\r\n")
    return payload[:-2] if payload.endswith(b"\r\n") else payload


def wait_for_metric(
    origin: RunningOrigin, name: str, at_least: float, timeout: float = 30, **labels: str
) -> float:
    """Poll the origin's metrics until the counter reaches ``at_least`` (requests to the
    fill service go out in the background, after the answer)."""
    deadline = time.monotonic() + timeout
    while (value := metric(origin, name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} stayed at {value}"
        time.sleep(0.05)
    return value
