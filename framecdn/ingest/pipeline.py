"""Ingest: split each DICOM instance into frame objects, then metadata, then the index.

Each write of an instance is a new *generation* (``framestore.keys``): its frames and
metadata go under a generation of their own, and the index, written last in one PUT,
names it. The index is the commit marker: until it exists (or while it still names the
old generation) the origin serves what was there before, so a crash, a Ctrl-C or a
store that dies never exposes half an instance, a replacement that dies leaves the
old version served, and running ingest again completes it. Only after the swap are
the old generation's objects removed; a failed write removes its own generation and
nothing else.

Frames are uploaded in parallel, with a global bound on the frame bytes held in
memory (``FRAMECDN_INGEST_MEMORY_MB``). A frame larger than that bound is never held
whole: it is read in parts and written with an S3 multipart upload, its SHA-256
computed on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from framecdn.errors import BackendError, Cancelled, FramecdnError, StoreError
from framecdn.framestore.bucket import MAX_PARTS, MIN_PART_BYTES, Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.index import FrameEntry, InstanceIndex, InvalidIndex, SourceInfo
from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout, parse_object_key
from framecdn.framestore.part10 import FORMAT_VERSION
from framecdn.framestore.transfer_syntax import content_type
from framecdn.ingest import metadata
from framecdn.ingest.splitter import (
    FrameReader,
    InflateLimits,
    InvalidInstance,
    SplitInstance,
    open_instance,
)

log = logging.getLogger(__name__)

#: "metadata-only": stored without frames (an SR, KO, RT Plan: no Pixel Data).
Status = Literal["ingested", "metadata-only", "skipped", "failed"]
FINGERPRINT_SPAN = 64 * 1024


@dataclass(slots=True)
class IngestResult:
    """What happened to one source file."""

    source: str
    status: Status
    index: InstanceIndex | None = None
    reason: str = ""
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: A failure of the store or the machine, not of the file: the same file may be
    #: stored later (a DICOM sender is told "out of resources" and retries).
    retryable: bool = False


@dataclass(slots=True)
class IngestReport:
    """The outcome of one ``framecdn ingest`` run."""

    results: list[IngestResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for result in self.results if result.status == status)

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == "ingested")

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results if r.status == "ingested")

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


class IngestError(FramecdnError):
    """An instance could not be stored (the message is one line, for the user)."""


def source_fingerprint(path: Path) -> str:
    """A cheap identity of a file: its size and its first and last 64 KiB.

    A SOP instance never changes under the same UID, so this is enough to tell a
    re-run over the same file (skip) from a different file claiming the same UID.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            handle.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
            digest.update(handle.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


class ByteBudget:
    """Blocks the reader while the frame bytes waiting for upload exceed a byte budget.

    Whatever is asked for when nothing is held is let through, so a piece larger than
    the budget still goes (alone); ingest asks for whole frames up to the budget and
    for parts of larger ones. This, not the worker count, bounds ingest memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + size <= self.limit)
            self._used += size

    def release(self, size: int) -> None:
        with self._changed:
            self._used -= size
            self._changed.notify_all()


class Ingestor:
    """Stores instances in one bucket and prefix. Thread-safe; make one per run.

    ``bucket`` defaults to the one ``settings`` name, with a connection pool sized
    for the upload workers.
    """

    def __init__(
        self, settings: Settings, bucket: Bucket | None = None, *, force: bool = False
    ) -> None:
        self.settings = settings
        self.layout = KeyLayout(settings.prefix)
        self.force = force
        self.bucket = bucket or Bucket.from_settings(
            settings, max_connections=settings.ingest_workers + 4
        )
        self._uploads = ThreadPoolExecutor(
            settings.ingest_workers, thread_name_prefix="framecdn-upload"
        )
        # Frame bytes held in memory at once, across all files of the run.
        self._budget = ByteBudget(settings.ingest_memory_mb * 1024 * 1024)
        # Frames larger than the budget go in parts: a few in flight within the budget.
        self._part_size = max(MIN_PART_BYTES, self._budget.limit // 4)
        self._inflate_limits = InflateLimits(
            max_ratio=settings.ingest_max_inflate_ratio,
            max_bytes=settings.ingest_max_inflated_mb * 1024 * 1024,
        )
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop every instance in progress; each removes what it wrote."""
        self._cancelled.set()

    def close(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Public API ---------------------------------------------------------------
    def ingest(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        name: str | None = None,
        on_frame: Callable[[int], None] | None = None,
    ) -> IngestResult:
        """Store one instance; never raises for a bad file (the result says why)."""
        label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<stream>")
        started = time.monotonic()
        try:
            index, skipped = self._ingest(source, label, on_frame)
        except Cancelled:
            raise  # the run was interrupted: the instance is not "failed"
        except (InvalidInstance, InvalidUID, FramecdnError) as exc:
            return IngestResult(
                label, "failed", reason=str(exc), seconds=_since(started),
                retryable=isinstance(exc, BackendError),
            )
        except OSError as exc:
            return IngestResult(
                label, "failed", reason=f"{exc}", seconds=_since(started), retryable=True
            )
        except Exception as exc:  # a reader bug must not stop a directory run
            log.debug("unexpected error on %s", label, exc_info=True)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            return IngestResult(label, "failed", reason=reason, seconds=_since(started))
        status: Status = "ingested" if index.number_of_frames else "metadata-only"
        return IngestResult(
            label,
            "skipped" if skipped else status,
            index=index,
            frames=index.number_of_frames,
            bytes=index.total_frame_bytes,
            seconds=_since(started),
        )

    # Steps -------------------------------------------------------------------
    def _ingest(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        label: str,
        on_frame: Callable[[int], None] | None,
    ) -> tuple[InstanceIndex, bool]:
        path = Path(source) if isinstance(source, (str, os.PathLike)) else None
        # Opened before anything reads the path: the splitter refuses a FIFO or device
        # instead of blocking on it.
        with open_instance(source, limits=self._inflate_limits) as split:
            fingerprint = source_fingerprint(path) if path is not None else ""
            size = path.stat().st_size if path is not None else 0
            dataset = split.dataset
            key = InstanceKey(
                str(dataset.StudyInstanceUID),
                str(dataset.SeriesInstanceUID),
                str(dataset.SOPInstanceUID),
            )
            stored = self.stored_index(key)
            if (
                stored is not None
                and not self.force
                and fingerprint
                and stored.source.fingerprint == fingerprint
            ):
                return stored, True
            if stored is not None:
                # The stored version stays served until this write commits.
                log.warning("%s: replacing stored instance %s", label, key.instance)
            source_info = SourceInfo(
                name=path.name if path is not None else label,
                size=size,
                transfer_syntax_uid=split.source_transfer_syntax_uid,
                fingerprint=fingerprint,
            )
            generation = uuid.uuid4().hex
            try:
                index = self._write_instance(split, key, generation, source_info, on_frame)
            except BaseException:
                self._discard(key, generation)
                raise
            if stored is not None and stored.generation != generation:
                self._remove_generation(key, stored.generation)
            return index, False

    def _write_instance(
        self,
        split: SplitInstance,
        key: InstanceKey,
        generation: str,
        source: SourceInfo,
        on_frame: Callable[[int], None] | None,
    ) -> InstanceIndex:
        frames = self._upload_frames(split, key, generation, on_frame)
        body = metadata.encode(
            metadata.instance_json(
                split.dataset,
                key=key,
                transfer_syntax_uid=split.transfer_syntax_uid,
                number_of_frames=split.number_of_frames,
            )
        )
        self._put(
            self.layout.metadata(key, generation=generation), body, "application/dicom+json"
        )
        extra: dict[str, Any] = {}
        part10 = split.part10()
        if part10 is not None:  # written before the index, which commits it (#20 item 2)
            raw = part10.to_bytes()
            entry = self._put(
                self.layout.part10(key, generation=generation), raw, "application/octet-stream"
            )
            extra["part10"] = {"size": entry.size, "sha256": entry.sha256, "format": FORMAT_VERSION}
        ds = split.dataset
        index = InstanceIndex(
            study_instance_uid=key.study,
            series_instance_uid=key.series,
            sop_instance_uid=key.instance,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            transfer_syntax_uid=split.transfer_syntax_uid,
            media_type=split.media_type,
            number_of_frames=split.number_of_frames,
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
            bits_stored=int(ds.get("BitsStored", 0) or 0),
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
            photometric_interpretation=str(ds.get("PhotometricInterpretation", "")),
            frames=tuple(frames),
            metadata_size=len(body),
            metadata_sha256=hashlib.sha256(body).hexdigest(),
            source=source,
            ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ingest_id=generation,
            extra=extra,
        )
        if self._cancelled.is_set():  # interrupted after the last frame was read: no commit
            raise Cancelled("ingest interrupted")
        # The commit marker, in one PUT: only now is this generation the one served.
        self._put(self.layout.index(key), index.to_json(), "application/json")
        return index

    def _upload_frames(
        self,
        split: SplitInstance,
        key: InstanceKey,
        generation: str,
        on_frame: Callable[[int], None] | None,
    ) -> list[FrameEntry]:
        media = content_type(split.media_type, split.transfer_syntax_uid)
        futures: list[Future[FrameEntry]] = []
        failed = threading.Event()
        try:
            for reader in split.frame_readers():
                if self._cancelled.is_set():
                    raise Cancelled("ingest interrupted")
                if failed.is_set():
                    break
                object_key = self.layout.frame(key, reader.number, generation=generation)
                if reader.size > self._budget.limit:
                    # Never whole in memory: in parts, waiting here until it is stored.
                    entry = self._put_in_parts(object_key, reader, media, on_frame)
                    futures.append(_settled_future(entry))
                    continue
                self._budget.acquire(reader.size)  # before the frame is read into memory
                try:
                    frame = reader.read()
                except BaseException:
                    self._budget.release(reader.size)
                    raise
                future = self._uploads.submit(self._put, object_key, frame, media)
                future.add_done_callback(self._settled(reader.size, failed, on_frame))
                futures.append(future)
                del frame
        except BaseException:
            for future in futures:
                future.cancel()
            _wait_all(futures)
            raise
        entries = [future.result() for future in futures]  # re-raises an upload error
        if len(entries) != split.number_of_frames:
            raise IngestError(f"expected {split.number_of_frames} frames, split {len(entries)}")
        return entries

    def _put_in_parts(
        self,
        object_key: str,
        reader: FrameReader,
        media_type: str,
        on_frame: Callable[[int], None] | None,
    ) -> FrameEntry:
        """Write one large frame with a multipart upload, a few parts in flight at a time.

        Each part is read only once the budget has room for it and is dropped once
        uploaded; the frame's SHA-256 is computed as the parts go by. Any failure (or a
        cancel) aborts the upload, so no part is left behind.
        """
        part_size = max(self._part_size, math.ceil(reader.size / MAX_PARTS))
        upload = self.bucket.start_multipart(object_key, media_type)
        digest = hashlib.sha256()
        futures: list[Future[str]] = []
        failed = threading.Event()
        try:
            chunks = reader.chunks(part_size)
            remaining = reader.size
            number = 0
            while remaining > 0:
                if self._cancelled.is_set():
                    raise Cancelled("ingest interrupted")
                if failed.is_set():
                    break
                size = min(part_size, remaining)
                self._budget.acquire(size)
                try:
                    part = next(chunks)
                except BaseException:
                    self._budget.release(size)
                    raise
                if len(part) != size:
                    self._budget.release(size)
                    raise IngestError(f"frame {reader.number}: read {len(part)} of {size} bytes")
                digest.update(part)
                number += 1
                future = self._uploads.submit(upload.upload_part, number, part)
                future.add_done_callback(self._settled(size, failed, on_frame))
                futures.append(future)
                remaining -= size
                del part
            for future in futures:
                future.result()  # re-raises a part's upload error
            if remaining:
                raise IngestError(f"frame {reader.number}: upload stopped with bytes left")
            upload.complete()
        except BaseException:
            for future in futures:
                future.cancel()
            _wait_all(futures)
            try:
                upload.abort()
            except StoreError as exc:
                log.error("could not abort the multipart upload of %s: %s", object_key, exc)
            raise
        return FrameEntry(reader.size, digest.hexdigest())

    def _settled(
        self, size: int, failed: threading.Event, on_frame: Callable[[int], None] | None
    ) -> Callable[[Future[Any]], None]:
        """The done-callback of one upload of ``size`` bytes: the bytes go back to the
        budget, and a failed upload sets ``failed`` (nothing more is read), a stored one
        is reported to ``on_frame``."""

        def settle(future: Future[Any]) -> None:
            self._budget.release(size)
            if future.cancelled() or future.exception() is not None:
                failed.set()
            elif on_frame is not None:
                on_frame(size)

        return settle

    def _put(self, object_key: str, body: bytes, media_type: str) -> FrameEntry:
        """Write one object, tagged ``cache``, with a SHA-256 the store verifies."""
        return FrameEntry(len(body), self.bucket.put(object_key, body, media_type))

    def stored_index(self, key: InstanceKey) -> InstanceIndex | None:
        """The committed index of an instance; None when there is none or it is not valid.

        A failing read raises StoreError: only "no such key" means not stored.
        """
        raw = self.bucket.get_or_none(self.layout.index(key))
        if raw is None:
            return None
        try:
            return InstanceIndex.from_json(raw)
        except InvalidIndex:
            return None

    def _discard(self, key: InstanceKey, generation: str) -> None:
        """Remove what a failed write stored: its own generation, never another one.

        The index is left alone: it names the committed generation (if any), which stays
        served. Only if the index turns out to name this very generation (its PUT went
        through although the call failed) is nothing removed. What cannot be removed now
        (the store is down) stays invisible, for ``framecdn verify --repair``.
        """
        where = self.layout.generation_prefix(key, generation)
        try:
            stored = self.stored_index(key)
            if stored is not None and stored.generation == generation:
                return
            self.bucket.delete([obj.key for obj in self.bucket.list(where)])
        except StoreError as exc:
            log.error("could not clean up %s (it is not served): %s", where, exc)

    def _remove_generation(self, key: InstanceKey, generation: str | None) -> None:
        """Delete the frames and metadata of a generation the index no longer names.

        ``None`` is the schema-1 layout (objects directly under the instance). Readers
        that still hold the old index find its objects gone and read the index again.
        A failure leaves the objects for ``framecdn verify --repair``.
        """
        try:
            doomed = []
            for obj in self.bucket.list(self.layout.instance_prefix(key)):
                parsed = parse_object_key(obj.key)
                if (
                    parsed is not None
                    and parsed.part != "index"
                    and parsed.instance == key
                    and parsed.generation == generation
                ):
                    doomed.append(obj.key)
            self.bucket.delete(doomed)
        except StoreError as exc:
            log.error(
                "instance %s replaced, but its old objects stay for now: %s", key.instance, exc
            )


def _settled_future(entry: FrameEntry) -> Future[FrameEntry]:
    future: Future[FrameEntry] = Future()
    future.set_result(entry)
    return future


def _wait_all(futures: Iterable[Future[Any]]) -> None:
    for future in futures:
        if not future.cancelled():
            with contextlib.suppress(BaseException):  # we only wait here
                future.exception()


def _since(started: float) -> float:
    return time.monotonic() - started


def iter_sources(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named, and files under directories named (recursively, sorted).

    Hidden files and DICOMDIR (a directory record, not an instance) are passed over.
    Anything else is yielded, FIFOs, sockets and devices too: the ingest of such a path
    fails at once with a one-line reason (the splitter never waits on it), so the run
    reports it instead of hanging or hiding it.
    """
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.upper() == "DICOMDIR":
                    continue
                yield Path(root) / name


def ingest_file(
    path: str | os.PathLike[str], settings: Settings, *, force: bool = False
) -> InstanceIndex:
    """Store one file and return its index; raise :class:`IngestError` if it cannot be."""
    with Ingestor(settings, force=force) as ingestor:
        result = ingestor.ingest(path)
    if result.status == "failed" or result.index is None:
        raise IngestError(f"{result.source}: {result.reason}")
    return result.index


def ingest_paths(
    paths: Iterable[str | os.PathLike[str]],
    settings: Settings,
    *,
    force: bool = False,
    progress: bool | None = None,
    on_result: Callable[[IngestResult], None] | None = None,
) -> IngestReport:
    """Store every instance under ``paths``, a few files at a time; report each outcome."""
    from tqdm import tqdm

    sources = list(iter_sources(paths))
    total = sum(p.stat().st_size for p in sources if p.is_file())
    report = IngestReport()
    started = time.monotonic()
    file_workers = max(1, min(4, settings.ingest_workers // 2))
    # progress=None: a bar only when stderr is a terminal.
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc="ingest",
        disable=None if progress is None else not progress,
    )
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    def one(path: Path) -> IngestResult:
        counted = 0

        def on_frame(size: int) -> None:
            nonlocal counted
            counted += size
            advance(size)

        result = ingestor.ingest(path, on_frame=on_frame)
        if path.is_file():
            advance(max(0, path.stat().st_size - counted))
        return result

    def one_or_cancelled(path: Path) -> IngestResult | None:
        try:
            return one(path)
        except Cancelled:
            return None

    with Ingestor(settings, force=force) as ingestor, ThreadPoolExecutor(file_workers) as files:
        try:
            ingestor.bucket.check()  # a wrong bucket or secret: one error, not one per file
            for future in [files.submit(one_or_cancelled, source) for source in sources]:
                result = _result_interruptibly(future)
                if result is None:
                    continue
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
        except KeyboardInterrupt:
            # Workers notice between frames, remove what they wrote, and stop.
            ingestor.cancel()
            files.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    report.seconds = _since(started)
    return report


def _result_interruptibly(future: Future[IngestResult | None]) -> IngestResult | None:
    """``future.result()``, waking up now and then: a signal the kernel hands to another
    thread only raises KeyboardInterrupt here once this thread runs again, and an endless
    wait would let the instance in progress commit before Ctrl-C is seen."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            continue
