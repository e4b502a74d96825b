"""QIDO-RS answered from the bucket: records built from what ingest wrote, nothing else.

There is no search index to keep in step with ingest. A study's record comes from the
study's own objects: listing its prefix finds the committed instances (their
``index.json``), and one instance's DICOM JSON per series gives the study's and the
series' attributes. So concurrent ingests of one study cannot lose an update (nothing
is updated), an evicted study disappears with its objects, and instances ingested by
any version of framecdn are found. Records are reused for
``FRAMECDN_QIDO_STUDY_CACHE_SECONDS``.

A search naming its StudyInstanceUIDs (or under ``/studies/{S}``) reads just those
studies. Any other search lists the studies under the prefix (one S3 request per 1000
studies) and reads each study's record (one listing and one small object per series,
then cached): fine for a cache of thousands of studies, not for an archive. There, a
PACS upstream answers the searches (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.origin.cache import TTLCache
from framecdn.origin.instances import Found
from framecdn.origin.qido_query import (
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    MODALITY,
    PIXEL_DATA,
    RETRIEVE_URL,
    SERIES_ATTRIBUTES,
    SERIES_INSTANCE_COUNT,
    SERIES_UID,
    SOP_UID,
    STUDY_ATTRIBUTES,
    STUDY_INSTANCE_COUNT,
    STUDY_SERIES_COUNT,
    STUDY_UID,
    Criterion,
    QidoQuery,
    Record,
    criterion_matches,
    element_strings,
    matches,
)
from framecdn.origin.scope import ReadScope

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

T = TypeVar("T")
R = TypeVar("R")
STUDY_DATE, STUDY_TIME = "00080020", "00080030"
SERIES_NUMBER, INSTANCE_NUMBER = "00200011", "00200013"


@dataclass(frozen=True, slots=True)
class SeriesEntry:
    """One series as the bucket holds it: its committed instances and one's attributes."""

    uid: str
    instances: tuple[InstanceKey, ...]
    sample: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StudyEntry:
    """One study under one layout (site), with the series that have a readable instance."""

    layout: KeyLayout
    uid: str
    series: tuple[SeriesEntry, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


# Records -------------------------------------------------------------------------------


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _own(obj: dict[str, Any]) -> Record:
    """An instance's stored object without file-meta and pixel data (not search matter)."""
    return {tag: el for tag, el in obj.items() if not tag.startswith("0002") and tag != PIXEL_DATA}


def study_record(entry: StudyEntry, root_url: str) -> Record:
    record = _own(entry.series[0].sample)
    modalities = sorted({m for s in entry.series for m in element_strings(s.sample.get(MODALITY))})
    record[MODALITIES_IN_STUDY] = _element("CS", *modalities)
    record[STUDY_SERIES_COUNT] = _element("IS", len(entry.series))
    record[STUDY_INSTANCE_COUNT] = _element("IS", entry.instance_count)
    record[RETRIEVE_URL] = _element("UR", f"{root_url}studies/{entry.uid}")
    record[INSTANCE_AVAILABILITY] = _element("CS", "ONLINE")
    record[STUDY_UID] = _element("UI", entry.uid)
    return record


def series_record(entry: StudyEntry, series: SeriesEntry, root_url: str) -> Record:
    record = _own(series.sample)
    record[SERIES_INSTANCE_COUNT] = _element("IS", len(series.instances))
    record[RETRIEVE_URL] = _element("UR", f"{root_url}studies/{entry.uid}/series/{series.uid}")
    record[INSTANCE_AVAILABILITY] = _element("CS", "ONLINE")
    record[STUDY_UID] = _element("UI", entry.uid)
    record[SERIES_UID] = _element("UI", series.uid)
    return record


def instance_record(key: InstanceKey, obj: dict[str, Any], root_url: str) -> Record:
    record = _own(obj)
    url = f"{root_url}studies/{key.study}/series/{key.series}/instances/{key.instance}"
    record[RETRIEVE_URL] = _element("UR", url)
    record[INSTANCE_AVAILABILITY] = _element("CS", "ONLINE")
    record[STUDY_UID] = _element("UI", key.study)
    record[SERIES_UID] = _element("UI", key.series)
    record[SOP_UID] = _element("UI", key.instance)
    return record


def _first(record: Record, tag: str) -> str:
    values = element_strings(record.get(tag))
    return values[0] if values else ""


def _number(record: Record, tag: str) -> float:
    try:
        return float(_first(record, tag))
    except ValueError:
        return float("inf")


def newest_first(records: list[Record]) -> list[Record]:
    """Studies by date and time, the most recent first (then by UID: a stable order)."""
    by_uid = sorted(records, key=lambda r: _first(r, STUDY_UID))
    return sorted(by_uid, key=lambda r: (_first(r, STUDY_DATE), _first(r, STUDY_TIME)),
                  reverse=True)


def numbered(records: list[Record], number_tag: str, uid_tag: str) -> list[Record]:
    """Series (instances) by their number, then UID."""
    return sorted(records, key=lambda r: (_number(r, number_tag), _first(r, uid_tag)))


def _only(criteria: Iterable[Criterion], tags: frozenset[str]) -> list[Criterion]:
    return [c for c in criteria if c.tag in tags]


def _passes(criteria: list[Criterion], record: Record) -> bool:
    return all(criterion_matches(c, record.get(c.tag)) for c in criteria)


# Reading the bucket --------------------------------------------------------------------


class BucketSearch:
    """Study records read from the bucket (cached), and searches over them."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        settings = origin.settings
        self.concurrency = settings.metadata_fetch_concurrency
        self.studies: TTLCache[tuple[str, str], StudyEntry] = TTLCache(
            settings.index_cache_entries, settings.qido_study_cache_seconds
        )

    async def _bounded(self, items: Iterable[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(item: T) -> R:
            async with semaphore:
                return await work(item)

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def _sample(self, layout: KeyLayout, keys: list[InstanceKey]) -> dict[str, Any] | None:
        """The DICOM JSON of the first committed, readable instance of ``keys``."""
        for key in keys:
            index = await self.origin.indexes.get(key, layout)
            if index is None:
                continue
            obj = await self.origin.metadata.instance_object(Found(layout, index))
            if obj is not None:
                return obj
        return None

    async def _load(self, layout: KeyLayout, study: str) -> StudyEntry | None:
        listed = await self.origin.store.list_keys(layout.study_prefix(study))
        by_series: dict[str, list[InstanceKey]] = {}
        for object_key in listed:
            key = layout.parse_index_key(object_key)
            if key is not None and key.study == study:
                by_series.setdefault(key.series, []).append(key)

        async def series_entry(item: tuple[str, list[InstanceKey]]) -> SeriesEntry | None:
            uid, keys = item
            sample = await self._sample(layout, keys)
            return None if sample is None else SeriesEntry(uid, tuple(keys), sample)

        found = await self._bounded(sorted(by_series.items()), series_entry)
        series = tuple(entry for entry in found if entry is not None)
        return StudyEntry(layout, study, series) if series else None

    async def study(self, scope: ReadScope, study: str) -> StudyEntry | None:
        """The study under the first of the scope's layouts that holds it."""
        for layout in scope.layouts_for(study):
            entry = await self.studies.get_or_load(
                (layout.prefix, study), functools.partial(self._load, layout, study)
            )
            if entry is not None:
                return entry
        return None

    async def _all_study_uids(self, scope: ReadScope) -> list[str]:
        uids: set[str] = set()
        for layout in scope.layouts:
            for listed in await self.origin.store.list_prefixes(layout.all_studies()):
                study = layout.parse_study_prefix(listed)
                if study is not None and scope.allows(study):
                    uids.add(study)
        return sorted(uids)

    async def candidates(
        self, scope: ReadScope, query: QidoQuery, study: str | None
    ) -> list[StudyEntry]:
        """The studies a search may concern: the path's, the query's UIDs, or all of them."""
        if study is not None:
            uids = [study] if scope.allows(study) else []
        else:
            wanted = query.uids(STUDY_UID)
            if wanted is None:
                uids = await self._all_study_uids(scope)
            else:
                uids = sorted(u for u in wanted if scope.allows(u))
        entries = await self._bounded(uids, lambda uid: self.study(scope, uid))
        return [entry for entry in entries if entry is not None]

    # Searches ----------------------------------------------------------------------------
    async def studies_matching(
        self, scope: ReadScope, query: QidoQuery, root_url: str
    ) -> list[Record]:
        entries = await self.candidates(scope, query, None)
        records = [study_record(entry, root_url) for entry in entries]
        return newest_first([r for r in records if matches(query, r)])

    async def series_matching(
        self, scope: ReadScope, query: QidoQuery, root_url: str, study: str | None
    ) -> list[Record]:
        studies = self._study_stage(await self.candidates(scope, query, study), query, root_url)
        found: list[Record] = []
        for entry in studies:
            records = [series_record(entry, s, root_url) for s in entry.series]
            found += numbered([r for r in records if matches(query, r)], SERIES_NUMBER,
                              SERIES_UID)
        return found

    async def instances_matching(
        self,
        scope: ReadScope,
        query: QidoQuery,
        root_url: str,
        study: str | None,
        series: str | None,
    ) -> list[Record]:
        studies = self._study_stage(await self.candidates(scope, query, study), query, root_url)
        series_criteria = _only(query.criteria, SERIES_ATTRIBUTES)
        wanted_series = query.uids(SERIES_UID)
        chosen: list[tuple[StudyEntry, SeriesEntry]] = []
        for entry in studies:
            for s in entry.series:
                if series is not None and s.uid != series:
                    continue
                if wanted_series is not None and s.uid not in wanted_series:
                    continue
                if _passes(series_criteria, series_record(entry, s, root_url)):
                    chosen.append((entry, s))

        async def records_of(item: tuple[StudyEntry, SeriesEntry]) -> list[Record]:
            entry, s = item
            layout = entry.layout
            objects = await self.origin.metadata.objects_under(
                layout.series_prefix(entry.uid, s.uid), layout
            )
            records = []
            for obj in objects:
                key = InstanceKey(entry.uid, s.uid, _first(obj, SOP_UID))
                records.append(instance_record(key, obj, root_url))
            matched = [r for r in records if matches(query, r)]
            return numbered(matched, INSTANCE_NUMBER, SOP_UID)

        found: list[Record] = []
        for records in await self._bounded(chosen, records_of):
            found += records
        return found

    @staticmethod
    def _study_stage(
        entries: list[StudyEntry], query: QidoQuery, root_url: str
    ) -> list[StudyEntry]:
        """Studies whose own attributes pass the query's study-level keys."""
        criteria = _only(query.criteria, STUDY_ATTRIBUTES - {MODALITIES_IN_STUDY})
        return [e for e in entries if _passes(criteria, study_record(e, root_url))]
