"""Follow Orthanc's change feed into the bucket, resumably, with no coordinator.

The follower reads ``/changes`` from its cursor, and for each new instance (or each
stable series, see ``FRAMECDN_FOLLOW_TRIGGER``) decides from Orthanc's index alone whether it
wants it (its shard, the filters, already stored unchanged), then downloads the file
to a temporary file on disk (bounded memory, checked against Orthanc's size and MD5)
and ingests it with the same :class:`~framecdn.ingest.pipeline.Ingestor` as
``framecdn ingest``: same objects, same commit marker, same skip-if-unchanged.

The cursor lives in the bucket (any replica can resume) and only ever moves past
changes whose instances are settled: committed, unchanged, filtered out, deleted in
Orthanc, or reported as permanently bad. With several instances in flight it stops
below the oldest unsettled one, so a restart redoes nothing that was committed and
loses nothing that was not.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal, Self, TypeVar

from framecdn.errors import Cancelled, FramecdnError, StoreError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout
from framecdn.ingest.follow_cursor import FeedCursor, FeedPosition, cursor_key, default_feed_id
from framecdn.ingest.follow_selection import Filters, Shard
from framecdn.ingest.orthanc import (
    MAX_CHANGES_PER_PAGE,
    CorruptDownload,
    IncompleteDownload,
    InstanceInfo,
    OrthancClient,
    OrthancError,
    OrthancUnavailable,
    ResourceGone,
    SeriesInfo,
    StudyInfo,
)
from framecdn.ingest.pipeline import Ingestor

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two cursor writes while instances keep completing.
CURSOR_SAVE_SECONDS = 1.0
_SERIES_CACHE_SIZE = 4096

EventKind = Literal[
    "ingested", "unchanged", "filtered", "deleted", "retry", "failed", "feed-unavailable"
]


# -- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowEvent:
    """Something the operator may want to know; the follower logs each as one line."""

    kind: EventKind
    instance_id: str  # Orthanc's id ("" for the feed itself)
    detail: str


@dataclass
class FollowStats:
    """Running totals (thread-safe through :meth:`add`)."""

    ingested: int = 0
    unchanged: int = 0
    filtered: int = 0
    other_shard: int = 0
    deleted: int = 0
    failed: int = 0
    retries: int = 0
    downloads: int = 0
    downloaded_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def summary(self) -> str:
        return (
            f"{self.ingested} ingested, {self.unchanged} unchanged, {self.filtered} filtered, "
            f"{self.other_shard} for other shards, {self.deleted} deleted before download, "
            f"{self.failed} failed; {self.downloads} downloads "
            f"({self.downloaded_bytes / 1e6:.1f} MB), {self.retries} retries"
        )


_LOG_LEVELS: dict[str, int] = {
    "ingested": logging.INFO,
    "unchanged": logging.INFO,
    "filtered": logging.DEBUG,
    "deleted": logging.WARNING,
    "retry": logging.WARNING,
    "failed": logging.ERROR,
    "feed-unavailable": logging.WARNING,
}


# -- the follower ------------------------------------------------------------------------


class IngestFailed(FramecdnError):
    """The pipeline reported a failure for a completely downloaded instance."""


class GaveUp(FramecdnError):
    """A one-shot run (``bounded``) met the same failure ``follow_max_attempts`` times."""


@dataclass(frozen=True, slots=True)
class InstanceJob:
    instance_id: str
    seq: int | None  # the change it came from; None in a backfill
    info: InstanceInfo | None = None  # already known from a series listing


class Follower:
    """Follows one Orthanc for one shard into one bucket and prefix.

    ``run()`` follows the feed until :meth:`stop` (or, with ``until_idle``, until the
    feed has nothing new); ``backfill()`` takes everything Orthanc already holds.
    """

    def __init__(
        self,
        settings: Settings,
        orthanc: OrthancClient,
        *,
        bucket: Bucket | None = None,
        on_event: Callable[[FollowEvent], None] | None = None,
        bounded: bool = False,
    ) -> None:
        """``bounded`` (one-shot runs, ``--once``): give up with :class:`GaveUp` after
        ``follow_max_attempts`` failures in a row of Orthanc or the store, instead of
        waiting for them forever as a long-running follower does."""
        self.settings = settings
        self.orthanc = orthanc
        self.shard = Shard.parse(settings.follow_shard)
        self.filters = Filters.from_settings(settings)
        self.trigger = settings.follow_trigger
        self.feed_id = settings.follow_feed_id or default_feed_id(orthanc.url)
        self.layout = KeyLayout(settings.prefix)
        self.bucket = bucket or Bucket.from_settings(settings)
        self.cursor = FeedCursor(
            self.bucket,
            cursor_key(self.layout, self.feed_id, self.shard),
            describe={"orthanc": orthanc.url, "shard": str(self.shard), "trigger": self.trigger},
        )
        self.stats = FollowStats()
        self._on_event = on_event
        self._bounded = bounded
        self._gave_up: GaveUp | None = None
        self._stop = threading.Event()
        self._ingestor = Ingestor(settings)
        self._series_cache: dict[str, SeriesInfo] = {}
        self._study_cache: dict[str, StudyInfo] = {}
        self._cache_lock = threading.Lock()
        self._position = FeedPosition(0)
        self._saved_seq: int | None = None
        self._saved_at = 0.0
        self._pool: ThreadPoolExecutor | None = None

    # Control -----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask every loop to stop: downloads abort, ingests finish, the cursor is saved."""
        self._stop.set()
        self._position.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._ingestor.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Following the feed ------------------------------------------------------------
    def run(self, *, until_idle: bool = False) -> FollowStats:
        """Follow the change feed from the stored cursor (or the start of Orthanc's log)."""
        start = self.cursor.load()
        self._position = FeedPosition(start or 0)
        self._saved_seq, self._saved_at = start, 0.0
        log.info(
            "following %s from change %d (shard %s, %s; cursor %s)",
            self.orthanc.url,
            start or 0,
            self.shard,
            self.trigger,
            self.cursor.key,
        )
        try:
            with ThreadPoolExecutor(
                self.settings.follow_concurrency, thread_name_prefix="framecdn-follow"
            ) as pool:
                self._pool = pool
                try:
                    self._follow(until_idle)
                except BaseException:
                    self.stop()  # in-flight downloads abort; ingests finish
                    raise
        finally:
            self._pool = None
            self._save_cursor(force=True)
        log.info("cursor at change %d; %s", self._position.settled_through, self.stats.summary())
        if self._gave_up is not None:
            raise self._gave_up
        return self.stats

    def _give_up(self, attempts: int, what: str, reason: str) -> bool:
        """In a bounded run, after ``follow_max_attempts``: stop everything (True)."""
        if not self._bounded or attempts < self.settings.follow_max_attempts:
            return False
        if self._gave_up is None:
            self._gave_up = GaveUp(f"gave up on {what} after {attempts} attempts: {reason}")
        self.stop()
        return True

    def _save_cursor(self, *, force: bool = False) -> None:
        """Write the settled position if it moved (at most once a second unless forced)."""
        position = self._position.settled_through
        if position == self._saved_seq:
            return
        if not force and time.monotonic() - self._saved_at < CURSOR_SAVE_SECONDS:
            return
        try:
            self.cursor.save(position)
        except StoreError as exc:
            log.warning("could not save the cursor at change %d: %s", position, exc)
            return
        self._saved_seq, self._saved_at = position, time.monotonic()

    def _follow(self, until_idle: bool) -> None:
        assert self._pool is not None
        position = self._position
        failures = 0
        concurrency = self.settings.follow_concurrency
        while not self._stop.is_set():
            self._save_cursor()
            if position.outstanding >= concurrency:
                position.wait(self.settings.follow_poll_seconds)
                continue
            try:
                page = self.orthanc.changes(position.fetched, MAX_CHANGES_PER_PAGE)
            except OrthancError as exc:
                failures += 1
                if self._give_up(failures, "Orthanc's change feed", str(exc)):
                    return
                delay = self._delay(failures)
                self._report("feed-unavailable", "", f"{exc}; retrying in {delay:.1f} s")
                self._stop.wait(delay)
                continue
            failures = 0
            if not page.changes and page.last < position.fetched:
                if position.outstanding == 0:
                    log.warning(
                        "Orthanc's change log ends at %d, before this follower's cursor %d: "
                        "its database was replaced; following it from the start",
                        page.last,
                        position.fetched,
                    )
                    position.restart(0)
                else:
                    position.wait(self.settings.follow_poll_seconds)
                continue
            wanted = [c for c in page.changes if c.change_type == self.trigger]
            position.add_page((c.seq for c in wanted), page.last)
            for change in wanted:
                if self.trigger == "StableSeries":
                    self._pool.submit(self._take_series, change.seq, change.resource_id)
                else:
                    job = InstanceJob(change.resource_id, change.seq)
                    self._pool.submit(self._take_job, job)
            if page.changes and not page.done:
                continue
            if not page.changes:
                if until_idle and position.outstanding == 0:
                    return
                position.wait(self.settings.follow_poll_seconds)

    def _take_series(self, seq: int, series_id: str) -> None:
        """Open one entry per instance of a stable series, then close the series' own."""
        try:
            instances = self._retrying(
                f"series {series_id}", lambda: self.orthanc.series_instances(series_id)
            )
        except ResourceGone:
            self._report("deleted", series_id, "series deleted from Orthanc before it was read")
            self._position.close(seq)
            return
        except (Cancelled, GaveUp):
            return  # a bounded run's GaveUp is raised by run()
        for info in instances:
            if self._stop.is_set() or self._pool is None:
                return  # the series stays open: the cursor will not pass it
            self._position.open(seq)
            self._pool.submit(self._take_job, InstanceJob(info.orthanc_id, seq, info))
        self._position.close(seq)

    def _take_job(self, job: InstanceJob) -> None:
        if self._settle(job) and job.seq is not None:
            self._position.close(job.seq)

    # Backfill ------------------------------------------------------------------------
    def backfill(self, *, since: date | None = None, progress: bool | None = None) -> FollowStats:
        """Take every instance Orthanc holds (or of studies dated ``since`` or later).

        Instances already stored unchanged cost one index read each, so an
        interrupted backfill is simply run again. A follower with no cursor yet
        starts following after the feed position read before the listing.
        """
        from tqdm import tqdm

        start_seq = self._retrying("the change log", self.orthanc.last_seq)
        ids: Iterable[str]
        if since is not None:
            query = {"StudyDate": f"{since:%Y%m%d}-"}
            found = self._retrying(
                "the instance search", lambda: self.orthanc.find_instances(query)
            )
            ids, total = found, len(found)
        else:
            total = self._retrying("the statistics", self.orthanc.instance_count)
            ids = self._all_instance_ids()
        bar = tqdm(
            total=total,
            unit="instance",
            desc="backfill",
            dynamic_ncols=True,
            disable=None if progress is None else not progress,
        )
        slots = threading.BoundedSemaphore(self.settings.follow_concurrency * 2)

        def one(instance_id: str) -> None:
            try:
                self._take_job(InstanceJob(instance_id, None))
            finally:
                slots.release()
                bar.update(1)
                bar.set_postfix_str(
                    f"{self.stats.ingested} new, {self.stats.unchanged} unchanged, "
                    f"{self.stats.failed} failed",
                    refresh=False,
                )

        try:
            with ThreadPoolExecutor(
                self.settings.follow_concurrency, thread_name_prefix="framecdn-backfill"
            ) as pool:
                try:
                    for instance_id in ids:
                        while not slots.acquire(timeout=0.5):
                            if self._stop.is_set():
                                break
                        if self._stop.is_set():
                            break
                        pool.submit(one, instance_id)
                except Cancelled:
                    pass
        finally:
            bar.close()
        if not self._stop.is_set() and self.cursor.load() is None:
            self.cursor.save(start_seq)
            log.info("backfill done; following will start after change %d", start_seq)
        log.info("backfill: %s", self.stats.summary())
        if self._gave_up is not None:
            raise self._gave_up
        return self.stats

    def _all_instance_ids(self, page_size: int = 1000) -> Iterator[str]:
        offset = 0
        while True:
            page = self._retrying(
                "the instance list",
                lambda offset=offset: self.orthanc.instance_page(offset, page_size),  # type: ignore[misc]
            )
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    # One instance ----------------------------------------------------------------------
    def _settle(self, job: InstanceJob) -> bool:
        """Try until the instance is settled (True), or the follower stops (False)."""
        attempt = 0
        counted = 0  # failures of the file itself, while Orthanc and the store are fine
        while not self._stop.is_set():
            attempt += 1
            try:
                self._take(job)
                return True
            except ResourceGone:
                self.stats.add("deleted")
                self._report(
                    "deleted",
                    job.instance_id,
                    "deleted from Orthanc before it could be downloaded: skipped",
                )
                return True
            except InvalidUID as exc:
                self.stats.add("failed")
                self._report("failed", job.instance_id, f"{exc}: passed over")
                return True
            except Cancelled:
                return False
            except (OrthancUnavailable, IncompleteDownload, StoreError) as exc:
                reason = str(exc)  # Orthanc, the network or the store: wait for them
                if self._give_up(attempt, f"Orthanc instance {job.instance_id}", reason):
                    return False
            except (CorruptDownload, IngestFailed) as exc:
                reason = str(exc)  # the file itself, unless the store is failing
                counted += self._store_is_healthy()
            except Exception as exc:  # an answer or a file this code did not expect
                log.debug("unexpected error on %s", job.instance_id, exc_info=True)
                reason = f"unexpected {type(exc).__name__}: {exc}"
                counted += self._store_is_healthy()
            if counted >= self.settings.follow_max_attempts:
                self.stats.add("failed")
                self._report(
                    "failed", job.instance_id, f"{reason} (after {counted} attempts): passed over"
                )
                return True
            delay = self._delay(attempt)
            self.stats.add("retries")
            self._report(
                "retry",
                job.instance_id,
                f"attempt {attempt} failed: {reason}; retrying in {delay:.1f} s",
            )
            self._stop.wait(delay)
        return False

    def _take(self, job: InstanceJob) -> None:
        info = job.info or self.orthanc.instance(job.instance_id)
        if not self.shard.takes(info.sop_instance_uid):
            self.stats.add("other_shard")
            return
        series = self._series(info.series_id)
        study = self._study(series.study_id)
        refused = self.filters.refuse(
            info, series, lambda: self.orthanc.sop_class_uid(info.orthanc_id)
        )
        if refused is not None:
            self.stats.add("filtered")
            self._report("filtered", info.orthanc_id, f"not followed: {refused}")
            return
        key = InstanceKey(
            study.study_instance_uid, series.series_instance_uid, info.sop_instance_uid
        )
        stored_file = self.orthanc.stored_file(info.orthanc_id)
        if self._stored_unchanged(key, stored_file.file_name, stored_file.size):
            self.stats.add("unchanged")
            self._report(
                "unchanged",
                info.orthanc_id,
                f"{key.instance} already stored from this file: not downloaded",
            )
            return
        with tempfile.TemporaryDirectory(prefix="framecdn-orthanc-") as spool:
            path = Path(spool) / stored_file.file_name
            with open(path, "wb") as out:
                size = self.orthanc.download(
                    info.orthanc_id, out, expected=stored_file, cancelled=self._stop
                )
            self.stats.add("downloads")
            self.stats.add("downloaded_bytes", size)
            result = self._ingestor.ingest(path, name=f"Orthanc instance {info.orthanc_id}")
        if result.status == "failed":
            raise IngestFailed(result.reason)
        kind: EventKind = "unchanged" if result.status == "skipped" else "ingested"
        self.stats.add(kind)
        self._report(
            kind,
            info.orthanc_id,
            (
                f"{key.instance}: {result.frames} frames, {result.bytes / 1e6:.1f} MB "
                f"in {result.seconds:.1f} s"
            ),
        )

    def _stored_unchanged(self, key: InstanceKey, file_name: str, size: int) -> bool:
        """The bucket holds this instance, committed from this very Orthanc file."""
        raw = self.bucket.get_or_none(self.layout.index(key))
        if raw is None:
            return False
        try:
            index = InstanceIndex.from_json(raw)
        except InvalidIndex:
            return False
        return index.source.name == file_name and index.source.size == size

    def _series(self, series_id: str) -> SeriesInfo:
        with self._cache_lock:
            known = self._series_cache.get(series_id)
        if known is None:
            known = self.orthanc.series(series_id)
            with self._cache_lock:
                if len(self._series_cache) >= _SERIES_CACHE_SIZE:
                    self._series_cache.clear()
                self._series_cache[series_id] = known
        return known

    def _study(self, study_id: str) -> StudyInfo:
        with self._cache_lock:
            known = self._study_cache.get(study_id)
        if known is None:
            known = self.orthanc.study(study_id)
            with self._cache_lock:
                if len(self._study_cache) >= _SERIES_CACHE_SIZE:
                    self._study_cache.clear()
                self._study_cache[study_id] = known
        return known

    # Failures ------------------------------------------------------------------------
    def _store_is_healthy(self) -> bool:
        try:
            self.bucket.check()
        except StoreError:
            return False
        return True

    def _delay(self, attempt: int) -> float:
        """Exponential backoff: the first retry after ``follow_retry_seconds``, then doubling."""
        first = self.settings.follow_retry_seconds
        return min(first * 2.0 ** max(0, attempt - 1), self.settings.follow_retry_max_seconds)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` until Orthanc answers; ResourceGone passes through; Cancelled on stop."""
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                return call()
            except OrthancUnavailable as exc:
                if self._give_up(attempt, what, str(exc)):
                    break
                delay = self._delay(attempt)
                self._report(
                    "feed-unavailable", "", f"reading {what}: {exc}; retrying in {delay:.1f} s"
                )
                self._stop.wait(delay)
        if self._gave_up is not None:
            raise self._gave_up
        raise Cancelled("the follower was asked to stop")

    def _report(self, kind: EventKind, instance_id: str, detail: str) -> None:
        where = f"Orthanc instance {instance_id}: " if instance_id else ""
        log.log(_LOG_LEVELS[kind], "%s%s", where, detail)
        if self._on_event is not None:
            self._on_event(FollowEvent(kind, instance_id, detail))
