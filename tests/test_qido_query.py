"""QIDO-RS parameters and matching: the pure functions of framecdn.origin.qido_query."""

from __future__ import annotations

import pytest

from framecdn.origin.qido_query import (
    STUDY_DEFAULTS,
    Criterion,
    InvalidQuery,
    QidoQuery,
    criterion_matches,
    matches,
    page,
    parse_query,
    project,
    tag_of,
    warning_header,
)

PATIENT_NAME, PATIENT_ID, STUDY_DATE, STUDY_TIME = "00100010", "00100020", "00080020", "00080030"
STUDY_UID, MODALITIES, ACCESSION = "0020000D", "00080061", "00080050"


def pn(name: str) -> dict:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


def el(vr: str, *values: object) -> dict:
    return {"vr": vr, "Value": list(values)}


RECORD = {
    PATIENT_NAME: pn("ROE^MARY"),
    PATIENT_ID: el("LO", "FCDN000001"),
    STUDY_DATE: el("DA", "20240115"),
    STUDY_TIME: el("TM", "0930"),
    STUDY_UID: el("UI", "1.2.3.4"),
    MODALITIES: el("CS", "MG", "SR"),
    ACCESSION: el("SH", "ACC0000001"),
    "00201208": el("IS", 4),
    "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk"},
    "00280010": el("US", 512),
}


def match(name: str, value: str, level: str = "study") -> bool:
    query = parse_query([(name, value)], level)  # type: ignore[arg-type]
    assert query.criteria, f"{name} was not taken as a matching key"
    return matches(query, RECORD)


def test_keywords_and_tags_name_the_same_attribute() -> None:
    assert tag_of("PatientName") == tag_of("00100010") == tag_of("00100010".lower()) == PATIENT_NAME
    assert tag_of("NoSuchKeyword") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ROE^MARY", True),
        ("roe^mary", True),  # person names: case-insensitive
        ("ROE^MARY^^^", True),  # empty trailing components are the same name
        ("roe*", True),
        ("*MAR?", True),
        ("R?E*", True),
        ("ROE", False),  # no wildcard: the whole name
        ("DOE*", False),
        ("DOE\\ROE*", True),  # several values: any of them
        ("", True),  # universal
    ],
)
def test_person_name_matching(value: str, expected: bool) -> None:
    assert match("PatientName", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("FCDN000001", True),
        ("fcdn000001", False),  # LO is case-sensitive
        ("FCDN*", True),
        ("FCDN00000?", True),
        ("FCDN", False),
        ("X\\FCDN000001", True),
    ],
)
def test_string_matching(value: str, expected: bool) -> None:
    assert match("00100020", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240115", True),
        ("20240114", False),
        ("20240101-20240131", True),
        ("20240116-20240131", False),
        ("20240101-20240114", False),
        ("-20240115", True),
        ("20240115-", True),
        ("20240116-", False),
        ("-20240114", False),
    ],
)
def test_date_ranges(value: str, expected: bool) -> None:
    assert match("StudyDate", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("093000", True), ("0930", True), ("0900-1000", True), ("1000-", False), ("-09", False)],
)
def test_time_matching_pads_short_times(value: str, expected: bool) -> None:
    assert match("StudyTime", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1.2.3.4", True), ("1.2.3", False), ("9.9,1.2.3.4", True), ("9.9\\1.2.3.4", True),
     ("9.9,8.8", False)],
)
def test_uid_lists(value: str, expected: bool) -> None:
    assert match("StudyInstanceUID", value) is expected


@pytest.mark.parametrize(
    ("value", "expected"), [("MG", True), ("SR", True), ("CT", False), ("CT\\MG", True)]
)
def test_modalities_in_study_matches_any_of_the_study(value: str, expected: bool) -> None:
    assert match("ModalitiesInStudy", value) is expected


def test_a_missing_attribute_does_not_match_a_value_but_matches_empty() -> None:
    assert match("StudyDescription", "X") is False
    assert match("StudyDescription", "") is True


def test_control_parameters_and_ignored_keys() -> None:
    query = parse_query(
        [("limit", "101"), ("offset", "5"), ("fuzzymatching", "false"),
         ("includefield", "00081030,00080060"), ("includefield", "PatientAge"),
         ("SOPClassUID", "1.2"), ("00400275.00321060", "x"), ("Bogus", "1")],
        "study",
    )
    assert (query.limit, query.offset, query.fuzzy) == (101, 5, False)
    assert query.include == {"00081030", "00080060", "00101010"}
    assert query.criteria == ()  # an instance attribute cannot match studies
    assert query.ignored == ("SOPClassUID", "00400275.00321060", "Bogus")
    header = warning_header(query, 0)
    assert header is not None and header.startswith("299 ")
    assert "SOPClassUID" in header and "Bogus" in header
    assert parse_query([("SOPClassUID", "1.2")], "instance").criteria == (
        Criterion("00080016", "UI", "1.2"),
    )


@pytest.mark.parametrize(
    "params", [[("limit", "x")], [("offset", "-1")], [("fuzzymatching", "maybe")]]
)
def test_bad_control_values_are_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidQuery):
        parse_query(params, "study")


def test_project_shows_defaults_includes_and_keys_of_the_level_only() -> None:
    query = parse_query([("includefield", "00280010,00201208"), ("PatientID", "F*")], "study")
    shown = project(query, RECORD, STUDY_DEFAULTS)
    assert list(shown) == sorted(shown)
    assert PATIENT_NAME in shown and PATIENT_ID in shown and "00201208" in shown
    assert "00280010" not in shown  # Rows is no study attribute
    everything = project(parse_query([("includefield", "all")], "instance"), RECORD, frozenset())
    assert "00280010" in everything and "7FE00010" not in everything  # never bulk data


def test_page_applies_offset_and_limit_and_counts_the_rest() -> None:
    items = [{"n": i} for i in range(10)]
    assert page(items, QidoQuery("study", limit=3, offset=2), cap=100) == (items[2:5], 5)
    assert page(items, QidoQuery("study"), cap=4) == (items[:4], 6)
    assert page(items, QidoQuery("study", offset=20), cap=4) == ([], 0)
    assert warning_header(QidoQuery("study"), 6) is not None


def test_criterion_on_numbers() -> None:
    assert criterion_matches(Criterion("00201208", "IS", "4"), RECORD["00201208"])
    assert not criterion_matches(Criterion("00201208", "IS", "5"), RECORD["00201208"])
