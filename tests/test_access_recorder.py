"""``AccessRecorder``: at most one marker write per study per period, with the latest time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from framecdn.framestore.access import AccessRecorder, decode_marker, encode_marker


def test_a_study_read_is_due_at_once_then_not_again_within_the_period():
    recorder = AccessRecorder(flush_seconds=3600)
    recorder.record("1.2.3", now=1000.0)
    assert list(recorder.due(now=1000.5)) == [("1.2.3", 1000.0)]
    recorder.record("1.2.3", now=1200.0)
    assert list(recorder.due(now=1300.0)) == []  # flushed 1000.5: next one at 4600.5


def test_after_the_period_the_latest_access_is_due():
    recorder = AccessRecorder(flush_seconds=60)
    recorder.record("1.2.3", now=10.0)
    list(recorder.due(now=10.0))
    recorder.record("1.2.3", now=20.0)
    recorder.record("1.2.3", now=65.0)
    assert list(recorder.due(now=69.9)) == []
    assert list(recorder.due(now=70.0)) == [("1.2.3", 65.0)]


def test_nothing_recorded_nothing_due_and_studies_are_independent():
    recorder = AccessRecorder(flush_seconds=60)
    assert list(recorder.due(now=0.0)) == []
    recorder.record("1.1", now=1.0)
    list(recorder.due(now=1.0))
    recorder.record("2.2", now=5.0)
    assert list(recorder.due(now=5.0)) == [("2.2", 5.0)]  # 1.1 was flushed 4 s ago


def test_records_from_many_threads_are_all_due_once():
    recorder = AccessRecorder(flush_seconds=60)
    studies = [f"1.2.{n}" for n in range(200)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: recorder.record(s, now=100.0), studies * 5))
    assert sorted(study for study, _ in recorder.due(now=100.0)) == sorted(studies)
    assert list(recorder.due(now=100.0)) == []


def test_markers_round_trip():
    assert decode_marker(encode_marker("1.2.3", 1234.5)) == ("1.2.3", 1234.5)
