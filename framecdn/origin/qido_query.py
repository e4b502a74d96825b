"""QIDO-RS search parameters and matching (PS3.18 §8.3.4, PS3.4 C.2.2.2): pure functions.

A search is parsed once into a :class:`QidoQuery`; each candidate (a study, series or
instance) is a *record*: a DICOM JSON object holding every attribute of its level and
of the levels above it, plus the computed ones (``ModalitiesInStudy``, the
``Number of ... Related ...`` counts, ``RetrieveURL``). :func:`matches` says whether a
record passes the query and :func:`project` cuts it down to what the answer shows.

Matching, as PS3.4 describes it for C-FIND and PS3.18 for QIDO-RS:

* an empty value matches everything (and asks for the attribute in the answer);
* UIDs: one UID or a list (``,`` or ``\\`` between them);
* dates and times: one value or a range (``20240101-20240131``, ``-20240131``,
  ``20240101-``);
* anything else: the value, or several (``\\`` between them: any of them), with the
  wildcards ``*`` and ``?``; person names match case-insensitively (PS3.4 allows it,
  and a user typing ``roe*`` means ROE^MARY).

A matching key this code cannot apply (a sequence path, an attribute below the
search's level) is ignored and named in a ``Warning`` header, as PS3.18 asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from framecdn.errors import Refusal

Level = Literal["study", "series", "instance"]
Record = dict[str, Any]

#: Query parameters that are not matching keys.
LIMIT, OFFSET, INCLUDEFIELD, FUZZYMATCHING = "limit", "offset", "includefield", "fuzzymatching"
_CONTROL = frozenset({LIMIT, OFFSET, INCLUDEFIELD, FUZZYMATCHING})
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_RANGE_VRS = frozenset({"DA", "TM", "DT"})


def tag_of(name: str) -> str | None:
    """``PatientName`` or ``00100010`` -> ``"00100010"``; None when it names nothing known."""
    if _HEX_TAG.fullmatch(name):
        return name.upper()
    number = tag_for_keyword(name)
    return None if number is None else f"{number:08X}"


def vr_of(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def _tags(*keywords: str) -> frozenset[str]:
    found = {tag_of(keyword) for keyword in keywords}
    assert None not in found, keywords
    return frozenset(t for t in found if t is not None)


# Attributes of each level (what a study or series search may match, and show with
# ``includefield=all``). Instance searches may match and show any attribute.
STUDY_ATTRIBUTES = _tags(
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientNames", "PatientAge",
    "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments", "StudyInstanceUID",
    "StudyID", "TimezoneOffsetFromUTC", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "InstanceAvailability", "RetrieveURL",
)
SERIES_ATTRIBUTES = STUDY_ATTRIBUTES - _tags(
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"
) | _tags(
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SeriesTime", "Laterality", "BodyPartExamined", "ProtocolName",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "OperatorsName",
    "PerformingPhysicianName", "Manufacturer", "ManufacturerModelName", "InstitutionName",
    "InstitutionalDepartmentName", "StationName", "FrameOfReferenceUID",
    "RequestAttributesSequence", "NumberOfSeriesRelatedInstances",
)
#: What each level answers without ``includefield`` (PS3.18 Table 10.6.3-3 and -4 / -5).
STUDY_DEFAULTS = _tags(
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
    "InstanceAvailability", "ModalitiesInStudy", "ReferringPhysicianName",
    "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "StudyDescription",
)
SERIES_DEFAULTS = _tags(
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
    "SeriesInstanceUID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "RetrieveURL", "StudyInstanceUID", "SeriesDate", "SeriesTime",
)
INSTANCE_DEFAULTS = _tags(
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns",
    "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
)
LEVEL_ATTRIBUTES: Mapping[Level, frozenset[str] | None] = {
    "study": STUDY_ATTRIBUTES,
    "series": SERIES_ATTRIBUTES,
    "instance": None,  # anything the instance holds
}
PIXEL_DATA = "7FE00010"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, MODALITIES_IN_STUDY = "00080060", "00080061"
RETRIEVE_URL, INSTANCE_AVAILABILITY = "00081190", "00080056"
STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT = "00201206", "00201208"
SERIES_INSTANCE_COUNT = "00201209"


class InvalidQuery(Refusal, ValueError):
    """A search parameter the origin cannot read (answered 400)."""


@dataclass(frozen=True, slots=True)
class Criterion:
    """One matching key: the attribute and the value as the client wrote it."""

    tag: str
    vr: str
    value: str

    @property
    def universal(self) -> bool:
        return self.value == ""


@dataclass(frozen=True, slots=True)
class QidoQuery:
    """A parsed search: what to match, what to show, which page."""

    level: Level
    criteria: tuple[Criterion, ...] = ()
    include: frozenset[str] = frozenset()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    #: Parameters that were ignored (for the Warning header).
    ignored: tuple[str, ...] = ()

    def value_of(self, tag: str) -> str | None:
        """The value the query gives ``tag`` (the first, if repeated), or None."""
        for criterion in self.criteria:
            if criterion.tag == tag:
                return criterion.value
        return None

    def uids(self, tag: str) -> frozenset[str] | None:
        """The UIDs a UID key asks for, or None when the key is absent or empty."""
        value = self.value_of(tag)
        if not value:
            return None
        return frozenset(uid_list(value))


def uid_list(value: str) -> list[str]:
    return [uid.strip() for uid in re.split(r"[,\\]", value) if uid.strip()]


def _non_negative(name: str, raw: str) -> int:
    try:
        number = int(raw)
    except ValueError:
        raise InvalidQuery(f"{name}={raw!r} is not a whole number") from None
    if number < 0:
        raise InvalidQuery(f"{name}={raw!r} must not be negative")
    return number


def parse_query(params: Iterable[tuple[str, str]], level: Level) -> QidoQuery:
    """The search named by the query string's ``(name, value)`` pairs, for ``level``."""
    criteria: list[Criterion] = []
    include: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    ignored: list[str] = []
    searchable = LEVEL_ATTRIBUTES[level]
    for name, value in params:
        key = name.strip()
        if key.lower() in _CONTROL:
            key = key.lower()
        if key == LIMIT:
            limit = _non_negative(LIMIT, value)
        elif key == OFFSET:
            offset = _non_negative(OFFSET, value)
        elif key == FUZZYMATCHING:
            if value.strip().lower() not in ("true", "false"):
                raise InvalidQuery(f"fuzzymatching={value!r} is neither true nor false")
            fuzzy = value.strip().lower() == "true"
        elif key == INCLUDEFIELD:
            for field in (f.strip() for f in value.split(",")):
                if field.lower() == "all":
                    include_all = True
                elif field:
                    tag = tag_of(field)
                    if tag is None:
                        ignored.append(f"includefield={field}")
                    else:
                        include.add(tag)
        else:
            tag = tag_of(key)
            vr = vr_of(tag) if tag is not None else "UN"
            if tag is None or vr == "SQ" or (searchable is not None and tag not in searchable):
                ignored.append(key)
                continue
            criteria.append(Criterion(tag, vr, value.strip()))
    return QidoQuery(
        level, tuple(criteria), frozenset(include), include_all, limit, offset, fuzzy,
        tuple(ignored),
    )


# Matching ---------------------------------------------------------------------------


def element_strings(element: Any) -> list[str]:
    """The values of a DICOM JSON element as strings (person names: every component group)."""
    if not isinstance(element, Mapping):
        return []
    strings: list[str] = []
    for value in element.get("Value") or []:
        if isinstance(value, Mapping):  # PN
            strings += [str(value[g]) for g in ("Alphabetic", "Ideographic", "Phonetic")
                        if value.get(g)]
        elif value is not None:
            strings.append(str(value))
    return strings


def _wildcard(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _normal_name(name: str) -> str:
    """``ROE^MARY^^^`` and ``ROE^MARY`` are the same name (empty trailing components)."""
    return name.strip().rstrip("^ ").strip()


def _normal_time(value: str) -> str:
    """``0930`` -> ``093000``, ``09:30:00`` -> ``093000``: comparable as strings."""
    value = value.strip().replace(":", "")
    whole, dot, fraction = value.partition(".")
    whole = whole.ljust(6, "0")
    return f"{whole}.{fraction.ljust(6, '0')}" if dot else f"{whole}.000000"


def _in_range(vr: str, candidate: str, query: str) -> bool:
    low, dash, high = query.partition("-")
    normal = _normal_time if vr == "TM" else (lambda v: v.strip())
    value = normal(candidate)
    if not dash:
        return value == normal(query)
    if low.strip() and value < normal(low):
        return False
    if high.strip():
        if vr == "TM":
            return value <= normal(high)
        # an upper bound that is a prefix (a DT date) includes the whole of it
        return value <= normal(high) or value.startswith(normal(high))
    return True


def criterion_matches(criterion: Criterion, element: Any) -> bool:
    """Whether one key matches one record's element (None: the record lacks it)."""
    if criterion.universal:
        return True
    values = element_strings(element)
    if not values:
        return False
    if criterion.vr == "UI":
        wanted = set(uid_list(criterion.value))
        return any(v in wanted for v in values)
    if criterion.vr in _RANGE_VRS:
        return any(_in_range(criterion.vr, v, criterion.value) for v in values)
    person = criterion.vr == "PN"
    alternatives = [a for a in criterion.value.split("\\") if a != ""] or [""]
    for alternative in alternatives:
        if person:
            alternative = _normal_name(alternative)
        if "*" in alternative or "?" in alternative:
            pattern = _wildcard(alternative, ignore_case=person)
            if any(pattern.fullmatch(_normal_name(v) if person else v) for v in values):
                return True
        elif person:
            if any(_normal_name(v).casefold() == alternative.casefold() for v in values):
                return True
        elif any(v.strip() == alternative.strip() for v in values):
            return True
    return False


def matches(query: QidoQuery, record: Record) -> bool:
    return all(criterion_matches(c, record.get(c.tag)) for c in query.criteria)


# Answers ------------------------------------------------------------------------------


def _is_bulk(element: Any) -> bool:
    return isinstance(element, Mapping) and ("BulkDataURI" in element or "InlineBinary" in element)


def project(query: QidoQuery, record: Record, defaults: frozenset[str]) -> Record:
    """The attributes of ``record`` the answer shows, in tag order.

    The level's defaults, the ``includefield`` attributes and the matching keys (which
    PS3.18 says are returned too), limited to the level's attributes; ``all`` shows
    every attribute of the level (for instances: all but bulk data).
    """
    allowed = LEVEL_ATTRIBUTES[query.level]
    if query.include_all:
        wanted: Iterable[str] = record.keys() if allowed is None else allowed | defaults
    else:
        wanted = defaults | query.include | {c.tag for c in query.criteria}
    shown = {}
    for tag in wanted:
        element = record.get(tag)
        if element is None or tag == PIXEL_DATA or _is_bulk(element):
            continue
        if allowed is not None and tag not in allowed and tag not in defaults:
            continue
        shown[tag] = element
    return dict(sorted(shown.items()))


def page(items: Sequence[Record], query: QidoQuery, cap: int) -> tuple[list[Record], int]:
    """``offset``/``limit`` applied (at most ``cap``); also how many more matched."""
    start = min(query.offset, len(items))
    count = cap if query.limit is None else min(query.limit, cap)
    chosen = list(items[start : start + count])
    return chosen, len(items) - start - len(chosen)


def warning_header(query: QidoQuery, more: int) -> str | None:
    """PS3.18's ``Warning: 299`` for ignored keys and for matches beyond the answer."""
    notes = []
    if query.ignored:
        names = ", ".join(
            keyword_for_tag(int(name, 16)) or name if _HEX_TAG.fullmatch(name) else name
            for name in query.ignored
        )
        notes.append(f"The following parameters are not supported: {names}")
    if more > 0:
        notes.append(f"There are {more} additional results that can be requested")
    if not notes:
        return None
    return "299 framecdn: " + "; ".join(notes)
