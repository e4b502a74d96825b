"""The Orthanc follower against a real Orthanc and a real S3 (SeaweedFS).

Instances are uploaded with Orthanc's ``POST /instances``; the follower reads the
change feed and must store them exactly as ``framecdn ingest`` does, byte-exact
against pydicom's reading of the uploaded files. Faults are real: Orthanc is
stopped and restarted, a relay proxy cuts a download mid-file, instances are
deleted from Orthanc before the follower gets to them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
import pytest

from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest.follower import Follower, FollowEvent, FollowStats, Shard, cursor_key
from framecdn.ingest.orthanc import OrthancClient
from framecdn.ingest.pipeline import ingest_file
from framecdn.synthetic import (
    DIGITAL_MAMMOGRAPHY_IMAGE_STORAGE,
    GeneratedInstance,
    write_encapsulated,
    write_tomosynthesis,
)
from tests.conftest import list_keys
from tests.origin_fixtures import pydicom_frames
from tests.orthanc_fixtures import OrthancServer, RelayProxy

FAST = {
    "follow_retry_seconds": 0.05,
    "follow_retry_max_seconds": 0.2,
    "follow_poll_seconds": 0.1,
    "orthanc_timeout": 10.0,
    # One cursor name whether the follower reaches Orthanc directly or through a proxy.
    "follow_feed_id": "test-feed",
}


@dataclass
class Run:
    stats: FollowStats
    events: list[FollowEvent]

    def ids(self, kind: str) -> list[str]:
        return [e.instance_id for e in self.events if e.kind == kind]


def instance(tmp_path: Path, seed: int, *, frames: int = 3, **kwargs) -> GeneratedInstance:
    """A small native tomosynthesis-like instance (64x48, 16-bit)."""
    return write_tomosynthesis(
        tmp_path / f"inst-{seed}.dcm", frames=frames, rows=64, columns=48, seed=seed, **kwargs
    )


def follower(
    settings: Settings,
    url: str,
    server: OrthancServer,
    events: list[FollowEvent] | None = None,
    on_event: Callable[[FollowEvent], None] | None = None,
    **overrides,
) -> Follower:
    client = OrthancClient(url, username=server.username, password=server.password, timeout=10.0)
    recorded = events if events is not None else []

    def record(event: FollowEvent) -> None:
        recorded.append(event)
        if on_event is not None:
            on_event(event)

    return Follower(settings.with_overrides(**{**FAST, **overrides}), client, on_event=record)


def follow(settings: Settings, url: str, server: OrthancServer, **overrides) -> Run:
    """One follower run until the feed has nothing new."""
    events: list[FollowEvent] = []
    with follower(settings, url, server, events, **overrides) as f:
        try:
            stats = f.run(until_idle=True)
        finally:
            f.orthanc.close()
    return Run(stats, events)


def stored_index(client, settings: Settings, inst: GeneratedInstance) -> InstanceIndex | None:
    key = InstanceKey(inst.study_uid, inst.series_uid, inst.sop_uid)
    try:
        body = client.get_object(Bucket=settings.bucket, Key=KeyLayout(settings.prefix).index(key))
    except client.exceptions.NoSuchKey:
        return None
    return InstanceIndex.from_json(body["Body"].read())


def assert_stored_byte_exact(client, settings: Settings, inst: GeneratedInstance) -> None:
    layout = KeyLayout(settings.prefix)
    index = stored_index(client, settings, inst)
    assert index is not None, f"{inst.path.name} not committed"
    expected = pydicom_frames(inst.path)
    assert index.number_of_frames == len(expected)
    for number, frame in enumerate(expected, start=1):
        body = client.get_object(Bucket=settings.bucket, Key=layout.frame_of(index, number))
        assert body["Body"].read() == frame, f"frame {number} of {inst.path.name} differs"
    metadata = json.loads(
        client.get_object(Bucket=settings.bucket, Key=layout.metadata_of(index))["Body"].read()
    )
    assert metadata["00080018"]["Value"] == [inst.sop_uid]


def instance_keys(client, settings: Settings, inst: GeneratedInstance) -> list[str]:
    key = InstanceKey(inst.study_uid, inst.series_uid, inst.sop_uid)
    return list_keys(client, settings.bucket, KeyLayout(settings.prefix).instance_prefix(key))


def cursor_key_of(settings: Settings, shard: str = "0/1", feed: str = "test-feed") -> str:
    return cursor_key(KeyLayout(settings.prefix), feed, Shard.parse(shard))


def cursor_of(client, settings: Settings, shard: str = "0/1", feed: str = "test-feed") -> int:
    body = client.get_object(Bucket=settings.bucket, Key=cursor_key_of(settings, shard, feed))
    return int(json.loads(body["Body"].read())["seq"])


def last_seq(server: OrthancServer) -> int:
    return int(server.get_json("/changes?last")["Last"])


def new_instance_seqs(server: OrthancServer) -> dict[str, int]:
    """Orthanc id -> Seq of its NewInstance change."""
    answer = server.get_json("/changes?since=0&limit=100")
    return {c["ID"]: c["Seq"] for c in answer["Changes"] if c["ChangeType"] == "NewInstance"}


# -- the happy path ----------------------------------------------------------------------


def test_follower_ingests_uploads_byte_exact_as_ingest_would(
    orthanc, settings, s3_client, tmp_path
) -> None:
    study = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    uploads = [
        instance(tmp_path, 1, study_uid=study, series_uid=series),
        instance(tmp_path, 2, study_uid=study, series_uid=series, frames=5),
        instance(tmp_path, 3),
    ]
    ids = [orthanc.upload(inst.path) for inst in uploads]

    run = follow(settings, orthanc.url, orthanc)

    assert sorted(run.ids("ingested")) == sorted(ids)
    assert run.stats.downloads == 3 and run.stats.failed == 0
    for inst in uploads:
        assert_stored_byte_exact(s3_client, settings, inst)
    # The same objects as `framecdn ingest` of the uploaded file, under another prefix.
    reference = settings.with_overrides(prefix=settings.prefix + "-ingest")
    for inst in uploads:
        by_ingest = ingest_file(inst.path, reference)
        by_follower = stored_index(s3_client, settings, inst)
        assert by_follower is not None
        assert by_follower.frames == by_ingest.frames
        assert by_follower.metadata_sha256 == by_ingest.metadata_sha256
        assert by_follower.source.fingerprint == by_ingest.source.fingerprint
    # The cursor is past everything the feed held.
    assert cursor_of(s3_client, settings) == last_seq(orthanc)


def test_restart_resumes_from_the_cursor_without_downloading_again(
    orthanc, settings, s3_client, tmp_path
) -> None:
    first = [instance(tmp_path, seed) for seed in (10, 11)]
    for inst in first:
        orthanc.upload(inst.path)
    with RelayProxy(orthanc.http_port) as proxy:
        run = follow(settings, proxy.url, orthanc)
        assert run.stats.ingested == 2
        assert proxy.count(r"/file$") == 2
        cursor = cursor_of(s3_client, settings)
        assert cursor == last_seq(orthanc)

        second = [instance(tmp_path, seed) for seed in (12, 13)]
        for inst in second:
            orthanc.upload(inst.path)
        run = follow(settings, proxy.url, orthanc)
        # Only the new instances were downloaded, and the feed was read from the cursor on.
        assert run.stats.ingested == 2 and run.stats.unchanged == 0
        assert proxy.count(r"/file$") == 4
        assert proxy.count(r"^/changes\?since=0&") == 1
        assert proxy.count(rf"^/changes\?since={cursor}&") >= 1
        for inst in first + second:
            assert_stored_byte_exact(s3_client, settings, inst)

        # Nothing new: nothing downloaded, nothing ingested.
        run = follow(settings, proxy.url, orthanc)
        assert run.stats.ingested == run.stats.unchanged == 0
        assert proxy.count(r"/file$") == 4

        # A lost cursor costs an index read per instance, not a download.
        s3_client.delete_object(Bucket=settings.bucket, Key=cursor_key_of(settings))
        run = follow(settings, proxy.url, orthanc)
        assert run.stats.unchanged == 4 and run.stats.ingested == 0
        assert proxy.count(r"/file$") == 4


def test_instance_ingested_from_its_file_first_is_downloaded_but_not_stored_again(
    orthanc, settings, s3_client, tmp_path
) -> None:
    inst = instance(tmp_path, 15)
    by_ingest = ingest_file(inst.path, settings)  # `framecdn ingest` of the same file
    orthanc.upload(inst.path)
    run = follow(settings, orthanc.url, orthanc)
    # The follower cannot know before downloading; the pipeline's fingerprint then says
    # "unchanged" and nothing is written again.
    assert (run.stats.downloads, run.stats.unchanged, run.stats.ingested) == (1, 1, 0)
    stored = stored_index(s3_client, settings, inst)
    assert stored is not None and stored.ingest_id == by_ingest.ingest_id


def test_two_shards_split_the_feed_with_nothing_done_twice_or_missed(
    orthanc, settings, s3_client, tmp_path
) -> None:
    uploads = [instance(tmp_path, seed, frames=2) for seed in range(20, 32)]
    ids = {orthanc.upload(inst.path): inst for inst in uploads}
    runs: dict[str, Run] = {}

    def one_shard(shard: str) -> None:
        runs[shard] = follow(settings, orthanc.url, orthanc, follow_shard=shard)

    threads = [threading.Thread(target=one_shard, args=(s,)) for s in ("0/2", "1/2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    first, second = set(runs["0/2"].ids("ingested")), set(runs["1/2"].ids("ingested"))
    assert first and second, "with 12 instances each shard should get some"
    assert not first & second
    assert first | second == set(ids)
    assert runs["0/2"].stats.downloads + runs["1/2"].stats.downloads == len(ids)
    for orthanc_id in first:
        assert Shard(0, 2).takes(ids[orthanc_id].sop_uid)
    for inst in uploads:
        assert_stored_byte_exact(s3_client, settings, inst)
    # Each shard keeps its own cursor, both at the end of the feed.
    assert cursor_of(s3_client, settings, "0/2") == last_seq(orthanc)
    assert cursor_of(s3_client, settings, "1/2") == last_seq(orthanc)


def test_filters_decide_before_downloading(orthanc, settings, s3_client, tmp_path) -> None:
    tomo = instance(tmp_path, 40, frames=4)
    single = instance(tmp_path, 41, frames=1, sop_class_uid=DIGITAL_MAMMOGRAPHY_IMAGE_STORAGE)
    ct_path = tmp_path / "ct.dcm"
    ct = instance(tmp_path, 42, frames=4)
    dataset = pydicom.dcmread(ct.path)
    dataset.Modality = "CT"
    dataset.SeriesInstanceUID = pydicom.uid.generate_uid()
    dataset.save_as(ct_path)
    ids = {
        "tomo": orthanc.upload(tomo.path),
        "single": orthanc.upload(single.path),
        "ct": orthanc.upload(ct_path),
    }
    with RelayProxy(orthanc.http_port) as proxy:
        run = follow(settings, proxy.url, orthanc, follow_modalities=("mg",), follow_min_frames=2)
        assert run.ids("ingested") == [ids["tomo"]]
        assert sorted(run.ids("filtered")) == sorted([ids["single"], ids["ct"]])
        assert proxy.count(r"/file$") == 1
    assert_stored_byte_exact(s3_client, settings, tomo)
    assert stored_index(s3_client, settings, single) is None

    # SOP class filter, on a fresh cursor (another feed id) over the same feed.
    run = follow(
        settings,
        orthanc.url,
        orthanc,
        follow_feed_id="by-class",
        follow_sop_classes=(DIGITAL_MAMMOGRAPHY_IMAGE_STORAGE,),
    )
    assert run.ids("ingested") == [ids["single"]]
    assert_stored_byte_exact(s3_client, settings, single)


@pytest.mark.parametrize("orthanc", [{"stable_age": 2}], indirect=True)
def test_stable_series_trigger_takes_whole_series(orthanc, settings, s3_client, tmp_path) -> None:
    series = pydicom.uid.generate_uid()
    study = pydicom.uid.generate_uid()
    uploads = [instance(tmp_path, s, study_uid=study, series_uid=series) for s in (50, 51, 52)]
    ids = [orthanc.upload(inst.path) for inst in uploads]
    assert len({orthanc.get_json(f"/instances/{i}")["ParentSeries"] for i in ids}) == 1

    def called_stable(after: int = 0, through: int | None = None) -> bool:
        changes = orthanc.get_json("/changes?since=0&limit=100")["Changes"]
        return any(c["ChangeType"] == "StableSeries" and after < c["Seq"] <= (through or c["Seq"])
                   for c in changes)

    # NewInstance changes are not a StableSeries follower's business: until Orthanc calls
    # the series stable (which a slow machine may see before this run), it takes nothing.
    first = follow(settings, orthanc.url, orthanc, follow_trigger="StableSeries")
    stable_before = called_stable(through=cursor_of(s3_client, settings))
    assert sorted(first.ids("ingested")) == (sorted(ids) if stable_before else []), first.events
    # Orthanc calls the series stable once its last instance is StableAge old.
    last_upload = max(new_instance_seqs(orthanc).values())
    deadline = time.monotonic() + 30
    while not called_stable(after=last_upload):
        assert time.monotonic() < deadline, "Orthanc never called the series stable"
        time.sleep(0.2)
    run = follow(settings, orthanc.url, orthanc, follow_trigger="StableSeries")
    assert sorted(set(first.ids("ingested") + run.ids("ingested"))) == sorted(ids), run.events
    for inst in uploads:
        assert_stored_byte_exact(s3_client, settings, inst)
    assert cursor_of(s3_client, settings) == last_seq(orthanc)


# -- backfill ----------------------------------------------------------------------------


def test_backfill_since_a_date_then_follow_from_the_feed_position(
    orthanc, settings, s3_client, tmp_path
) -> None:
    # Seeds set the study date: 2024-01-01 + seed days.
    old, recent = instance(tmp_path, 5), instance(tmp_path, 100)
    ids = {"old": orthanc.upload(old.path), "recent": orthanc.upload(recent.path)}
    events: list[FollowEvent] = []
    with follower(settings, orthanc.url, orthanc, events) as f:
        stats = f.backfill(since=date(2024, 3, 1), progress=False)
        f.orthanc.close()
    assert stats.ingested == 1 and [e.instance_id for e in events] == [ids["recent"]]
    assert stored_index(s3_client, settings, old) is None
    assert_stored_byte_exact(s3_client, settings, recent)
    # A first backfill leaves the cursor at the feed's end: following starts from there.
    assert cursor_of(s3_client, settings) == last_seq(orthanc)
    run = follow(settings, orthanc.url, orthanc)
    assert run.stats.downloads == 0

    # Backfill of everything: the old study comes, the recent one is not downloaded again.
    with follower(settings, orthanc.url, orthanc) as f:
        stats = f.backfill(progress=False)
        f.orthanc.close()
    assert (stats.ingested, stats.unchanged, stats.downloads) == (1, 1, 1)
    assert_stored_byte_exact(s3_client, settings, old)


# -- faults ------------------------------------------------------------------------------


def test_orthanc_stopped_mid_run_is_waited_for_and_the_cursor_never_skips(
    orthanc, settings, s3_client, tmp_path
) -> None:
    uploads = [instance(tmp_path, seed) for seed in (60, 61, 62, 63)]
    ids = [orthanc.upload(inst.path) for inst in uploads]
    seqs = new_instance_seqs(orthanc)
    last = last_seq(orthanc)
    failures = threading.Event()
    stopped = threading.Event()
    events: list[FollowEvent] = []

    def on_event(event: FollowEvent) -> None:
        if event.kind == "ingested" and not stopped.is_set():
            stopped.set()
            orthanc.stop()  # the first instance is in; Orthanc goes away
        outage = sum(e.kind in ("retry", "feed-unavailable") for e in events)
        if stopped.is_set() and outage >= 3:
            failures.set()

    f = follower(settings, orthanc.url, orthanc, events, on_event, follow_concurrency=1)
    result: list[FollowStats] = []
    thread = threading.Thread(target=lambda: result.append(f.run(until_idle=True)))
    thread.start()
    try:
        assert failures.wait(60), "the follower did not report Orthanc's absence"
        time.sleep(1.5)  # let the follower save its cursor while Orthanc is away
        during = cursor_of(s3_client, settings)
        first = next(e.instance_id for e in events if e.kind == "ingested")
        pending = [seqs[i] for i in ids if i != first]
        assert during < min(pending), "the cursor moved past an instance not yet stored"
        orthanc.start()
        thread.join(120)
        assert not thread.is_alive()
    finally:
        f.stop()
        thread.join(30)
        f.close()
        f.orthanc.close()
    assert sorted(e.instance_id for e in events if e.kind == "ingested") == sorted(ids)
    for inst in uploads:
        assert_stored_byte_exact(s3_client, settings, inst)
    assert cursor_of(s3_client, settings) == last
    assert result and result[0].failed == 0


def test_download_cut_mid_file_leaves_nothing_visible_then_retries(
    orthanc, settings, s3_client, tmp_path
) -> None:
    inst = instance(tmp_path, 70, frames=6)
    orthanc_id = orthanc.upload(inst.path)
    seen_during_failures: list[list[str]] = []

    def on_event(event: FollowEvent) -> None:
        if event.kind == "retry":
            seen_during_failures.append(instance_keys(s3_client, settings, inst))

    with RelayProxy(orthanc.http_port) as proxy:
        proxy.cut(r"/file$", after_bytes=20000, times=2)
        events: list[FollowEvent] = []
        with follower(settings, proxy.url, orthanc, events, on_event) as f:
            stats = f.run(until_idle=True)
            f.orthanc.close()
        assert proxy.count(r"/file$") == 3
    retries = [e for e in events if e.kind == "retry"]
    assert len(retries) == 2 and all(e.instance_id == orthanc_id for e in retries)
    assert all("bytes" in e.detail for e in retries), [e.detail for e in retries]
    assert seen_during_failures == [[], []], "a cut download left objects in the bucket"
    assert stats.ingested == 1 and stats.downloads == 1
    assert_stored_byte_exact(s3_client, settings, inst)


def test_instance_deleted_before_download_is_skipped_and_reported(
    orthanc, settings, s3_client, tmp_path
) -> None:
    kept, gone = instance(tmp_path, 80), instance(tmp_path, 81)
    kept_id = orthanc.upload(kept.path)
    gone_id = orthanc.upload(gone.path)
    last = last_seq(orthanc)

    def on_event(event: FollowEvent) -> None:
        # Both changes are read already; the second instance goes before its turn.
        if event.kind == "ingested" and event.instance_id == kept_id:
            orthanc.delete_instance(gone_id)

    events: list[FollowEvent] = []
    with follower(settings, orthanc.url, orthanc, events, on_event, follow_concurrency=1) as f:
        stats = f.run(until_idle=True)
        f.orthanc.close()
    deleted = [e for e in events if e.kind == "deleted"]
    assert [e.instance_id for e in deleted] == [gone_id]
    assert "deleted from Orthanc" in deleted[0].detail
    assert [e.instance_id for e in events if e.kind == "ingested"] == [kept_id]
    assert stats.downloads == 1 and stats.deleted == 1
    assert instance_keys(s3_client, settings, gone) == []
    assert cursor_of(s3_client, settings) >= last


def test_bad_file_is_reported_and_the_cursor_moves_on(
    orthanc, settings, s3_client, tmp_path
) -> None:
    # Orthanc stores it; the splitter refuses it (2 fragments for 5 frames).
    bad = write_encapsulated(
        tmp_path / "bad.dcm",
        [b"\xff\xd8abcd\xff\xd9", b"\xff\xd8efgh\xff\xd9"],
        transfer_syntax_uid="1.2.840.10008.1.2.4.50",
        rows=8,
        columns=8,
        number_of_frames=5,
    )
    bad_id = orthanc.upload(bad.path)
    good = instance(tmp_path, 90)
    good_id = orthanc.upload(good.path)
    run = follow(settings, orthanc.url, orthanc, follow_max_attempts=2)
    failed = [e for e in run.events if e.kind == "failed"]
    assert [e.instance_id for e in failed] == [bad_id]
    assert "NumberOfFrames is 5" in failed[0].detail
    assert run.stats.downloads == 3  # two attempts at the bad file, one good file
    assert run.ids("ingested") == [good_id]
    assert instance_keys(s3_client, settings, bad) == []
    assert cursor_of(s3_client, settings) == last_seq(orthanc)
