"""Read-through fill: instances a viewer asked for, copied from the upstream into the bucket.

The origin sends the instances it had to get from the upstream (``POST /fills`` of the
fill service, :mod:`framecdn.ingest.fill_service`), with the key prefix they belong under
(the service's own, or, with access control, the upstream's site below it);
:class:`Filler` takes each at most
once at a time, however many requests name it (an instance queued or being filled is
not queued again), with a bounded number in flight (``FRAMECDN_FILL_CONCURRENCY``) and a
bounded queue (``FRAMECDN_FILL_QUEUE_SIZE``: beyond it, requests are refused and asked
again at the next miss). A fill first looks for the instance's index (already there:
nothing to do), then downloads the Part 10 file from the upstream to a temporary file
(:mod:`framecdn.ingest.dicomweb_source`) and ingests it with the same
:class:`~framecdn.ingest.pipeline.Ingestor` as ``framecdn ingest``: same objects, same
commit marker, nothing visible unless complete. A fill that fails is reported and
forgotten; the next miss asks again.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import pydicom
from prometheus_client import CollectorRegistry, Counter, Gauge

from framecdn.errors import FramecdnError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey, InvalidPrefix, normalize_prefix
from framecdn.ingest.dicomweb_source import DicomwebSource
from framecdn.ingest.pipeline import Ingestor
from framecdn.ingest.sources import Source

log = logging.getLogger("framecdn.fill")

Result = Literal["ingested", "present", "failed"]


class WrongInstance(FramecdnError):
    """The upstream answered with a file of another instance."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """What became of the instances one request named."""

    queued: int = 0
    duplicates: int = 0  # already queued or being filled
    refused: int = 0  # the queue was full


class FillMetrics:
    """The fill service's counters (its own registry, served at its /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.fills = Counter(
            "framecdn_fills",
            "Fills done: ingested, present (already in the bucket), failed",
            ["result"],
            registry=r,
        )
        self.requested = Counter(
            "framecdn_fill_requested",
            "Instances named in fill requests: queued, duplicate, refused",
            ["outcome"],
            registry=r,
        )
        self.queued = Gauge("framecdn_fill_queue", "Fills queued or running", registry=r)
        self.downloaded = Counter(
            "framecdn_fill_downloaded_bytes", "Bytes downloaded from the upstream", registry=r
        )


class Filler:
    """Fills instances from the upstream, each at most once at a time, a few at once."""

    def __init__(self, settings: Settings, *, source: Source | None = None) -> None:
        """``source``: where instances come from (default: the upstream's WADO-RS, which
        the filler then also closes)."""
        self.settings = settings
        self.prefix = normalize_prefix(settings.prefix)
        self._own_source = None
        if source is None:
            source = self._own_source = DicomwebSource(
                settings, max_connections=settings.fill_concurrency + 2
            )
        self.source: Source = source
        self.metrics = FillMetrics()
        self._pool = ThreadPoolExecutor(settings.fill_concurrency, thread_name_prefix="fill")
        #: One Ingestor per key prefix filled into (the service's own, or a site below it).
        self._ingestors: dict[str, Ingestor] = {}
        self._active: set[tuple[str, InstanceKey]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.results: dict[str, int] = {"ingested": 0, "present": 0, "failed": 0}

    def close(self) -> None:
        """Stop: queued fills are dropped, running ones abort their download."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_source is not None:
            self._own_source.close()
        for ingestor in self._ingestors.values():
            ingestor.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Requests ------------------------------------------------------------------------
    def takes_prefix(self, prefix: str) -> bool:
        """A prefix this service may write: its own, or one below it (a site's)."""
        try:
            return normalize_prefix(prefix).startswith(self.prefix)
        except InvalidPrefix:
            return False

    def _ingestor(self, prefix: str) -> Ingestor:
        with self._lock:
            ingestor = self._ingestors.get(prefix)
            if ingestor is None:
                ingestor = Ingestor(self.settings.with_overrides(prefix=prefix))
                self._ingestors[prefix] = ingestor
            return ingestor

    def submit(self, keys: Iterable[InstanceKey], prefix: str | None = None) -> Submitted:
        """Queue the instances not already queued or being filled, under ``prefix`` (the
        service's own when None; the origin names the site a read-through belongs to)."""
        prefix = self.prefix if prefix is None else normalize_prefix(prefix)
        if not self.takes_prefix(prefix):
            raise InvalidPrefix(f"prefix {prefix!r} is not below this service's {self.prefix!r}")
        queued = duplicates = refused = 0
        for key in keys:
            job = (prefix, key)
            with self._lock:
                if job in self._active:
                    duplicates += 1
                    continue
                if len(self._active) >= self.settings.fill_queue_size or self._stop.is_set():
                    refused += 1
                    continue
                self._active.add(job)
                self.metrics.queued.set(len(self._active))
            self._pool.submit(self._run, job)
            queued += 1
        for outcome, count in (("queued", queued), ("duplicate", duplicates),
                               ("refused", refused)):
            if count:
                self.metrics.requested.labels(outcome).inc(count)
        return Submitted(queued, duplicates, refused)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (tests, benches); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, timeout)

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"active": len(self._active), **self.results}

    # One fill --------------------------------------------------------------------------
    def _run(self, job: tuple[str, InstanceKey]) -> None:
        prefix, key = job
        try:
            result = self.fill(key, prefix)
        finally:
            with self._idle:
                self._active.discard(job)
                self.metrics.queued.set(len(self._active))
                self._idle.notify_all()
        with self._lock:
            self.results[result] += 1
        self.metrics.fills.labels(result).inc()

    def fill(self, key: InstanceKey, prefix: str | None = None) -> Result:
        """Bring one instance into the bucket under ``prefix`` (unless it is there already);
        never raises."""
        if self._stop.is_set():
            return "failed"
        try:
            ingestor = self._ingestor(self.prefix if prefix is None else prefix)
            if ingestor.stored_index(key) is not None:
                return "present"
            with tempfile.TemporaryDirectory(prefix="framecdn-fill-") as spool:
                path = Path(spool) / f"{key.instance}.dcm"
                with open(path, "wb") as out:
                    size = self.source.download(key, out, cancelled=self._stop)
                self.metrics.downloaded.inc(size)
                _check_identity(path, key)
                result = ingestor.ingest(path, name=f"upstream instance {key.instance}")
        except (FramecdnError, OSError) as exc:
            log.warning("fill of %s failed: %s", key.instance, exc)
            return "failed"
        except Exception as exc:  # a file or answer this code did not expect
            log.exception("fill of %s failed unexpectedly: %s", key.instance, exc)
            return "failed"
        if result.status == "failed":
            log.warning("fill of %s failed: %s", key.instance, result.reason)
            return "failed"
        log.info(
            "filled %s: %d frames, %.1f MB in %.1f s",
            key.instance, result.frames, result.bytes / 1e6, result.seconds,
        )
        return "ingested"


def _check_identity(path: Path, key: InstanceKey) -> None:
    """The file is the instance that was asked for (else it would be stored elsewhere)."""
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
        found = InstanceKey(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
    except Exception as exc:
        raise WrongInstance(f"upstream file for {key.instance} is not readable: {exc}") from exc
    if found != key:
        raise WrongInstance(
            f"upstream answered instance {found.instance} of series {found.series} "
            f"for {key.instance} of series {key.series}"
        )
