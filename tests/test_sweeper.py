"""The access-aware sweeper on the real SeaweedFS: LRU under a budget, repair, refresh."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from framecdn.errors import StoreError
from framecdn.framestore.access import encode_marker, read_last_access
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import RETENTION_TAG
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance.inventory import take_inventory
from framecdn.maintenance.pinning import pin
from framecdn.maintenance.sweeper import sweep
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import NO_READ, list_keys, run_cli

ROOT = "1.2.826.0.1.3680043.20"


def study_uid(name: str) -> str:
    return f"{ROOT}.{ord(name)}"


@pytest.fixture
def studies(settings, tmp_path):
    """Four one-instance studies A, B, C, D ingested in that order."""
    found = {}
    for name in "ABCD":
        uid = study_uid(name)
        generated = write_tomosynthesis(
            tmp_path / f"{name}.dcm", frames=3, rows=32, columns=32,
            study_uid=uid, series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1",
        )
        found[name] = ingest_file(generated.path, settings)
    return found


def mark(client, settings, name: str, when: float) -> None:
    layout = KeyLayout(settings.prefix)
    uid = study_uid(name)
    client.put_object(
        Bucket=settings.bucket, Key=layout.access_marker(uid), Body=encode_marker(uid, when)
    )


def stored_studies(client, settings) -> set[str]:
    bucket = Bucket(client, settings.bucket)
    inventory = take_inventory(bucket, KeyLayout(settings.prefix), details=False)
    return {name for name in "ABCD" if study_uid(name) in inventory.studies}


def test_markers_read_back(s3_client, bucket, settings):
    mark(s3_client, settings, "A", 1234.5)
    s3_client.put_object(
        Bucket=settings.bucket, Key=f"{settings.prefix}/access/studies/not-a-uid", Body=b"{}"
    )
    assert read_last_access(bucket, KeyLayout(settings.prefix)) == {
        study_uid("A"): 1234.5
    }


def test_least_recently_accessed_go_first_and_pinned_stay(s3_client, bucket, settings, studies):
    layout = KeyLayout(settings.prefix)
    inventory = take_inventory(bucket, layout)
    size = {name: inventory.studies[study_uid(name)].bytes for name in "ABCD"}
    start = time.time() + 60  # every marker is later than every ingest
    mark(s3_client, settings, "D", start + 5)  # read long ago, but pinned
    mark(s3_client, settings, "A", start + 10)
    mark(s3_client, settings, "B", start + 1000)  # read most recently
    # C was never read: it ranks by its ingest time, before every read study.
    pin(bucket, layout, study_uid("D"))
    budget = sum(size.values()) - size["C"] - size["A"]

    plan = sweep(bucket, layout, max_bytes=budget, dry_run=True)
    assert [c.study for c in plan.evicted] == [study_uid("C"), study_uid("A")]
    assert stored_studies(s3_client, settings) == set("ABCD")

    report = sweep(bucket, layout, max_bytes=budget)
    assert [c.study for c in report.evicted] == [study_uid("C"), study_uid("A")]
    assert report.usage_before == sum(size.values())
    assert report.usage_after == budget and not report.over_budget
    assert stored_studies(s3_client, settings) == {"B", "D"}
    # A's marker went with the study; B's and D's stay.
    assert set(read_last_access(bucket, layout)) == {
        study_uid("B"), study_uid("D")
    }

    # Under budget already: nothing more goes.
    again = sweep(bucket, layout, max_bytes=budget)
    assert again.evicted == [] and stored_studies(s3_client, settings) == {"B", "D"}

    # A budget below the pinned bytes evicts B and then reports it cannot do more.
    final = sweep(bucket, layout, max_bytes=0)
    assert [c.study for c in final.evicted] == [study_uid("B")]
    assert final.over_budget and final.usage_after == final.pinned_bytes == size["D"]
    assert stored_studies(s3_client, settings) == {"D"}


def test_half_evicted_instances_and_dead_ingests_are_cleaned(s3_client, bucket, settings, studies):
    layout = KeyLayout(settings.prefix)
    half = studies["A"].key
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.frame_of(studies["A"], 2))
    dead = studies["B"].key
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.index(dead))
    running = studies["C"].key
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.index(running))

    # Within the grace period an index-less instance may be an ingest still running.
    young = sweep(bucket, layout)
    assert young.repaired == [half] and young.orphans == []
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(half)) == []
    assert len(list_keys(s3_client, settings.bucket, layout.instance_prefix(dead))) == 5

    old = sweep(bucket, layout, orphan_grace=timedelta(0), now=time.time() + 5)
    assert sorted(old.orphans, key=lambda k: k.study) == [dead, running]
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(dead)) == []
    assert stored_studies(s3_client, settings) == {"D"}


def test_old_generations_of_whole_instances_go_after_the_grace(
    s3_client, bucket, settings, studies
):
    """A generation the index does not name (a replacement that died) is removed once old."""
    layout = KeyLayout(settings.prefix)
    index = studies["A"]
    dead = "dead" * 8
    for number in (1, 2):
        s3_client.put_object(
            Bucket=settings.bucket, Key=layout.frame(index.key, number, generation=dead), Body=b"x"
        )
    leftover = layout.generation_prefix(index.key, dead)
    young = sweep(bucket, layout)
    assert young.leftovers == []
    assert len(list_keys(s3_client, settings.bucket, leftover)) == 2

    old = sweep(bucket, layout, orphan_grace=timedelta(0), now=time.time() + 5)
    assert old.leftovers == [index.key] and old.repaired == [] and old.orphans == []
    assert list_keys(s3_client, settings.bucket, leftover) == []
    committed = list_keys(s3_client, settings.bucket, layout.instance_prefix(index.key))
    assert len(committed) == 3 + 3  # its frames, metadata, part10 and index are untouched


def test_stale_markers_are_dropped(s3_client, bucket, settings, studies):
    layout = KeyLayout(settings.prefix)
    mark(s3_client, settings, "A", time.time())
    gone = "1.2.826.0.1.3680043.20.999"
    s3_client.put_object(
        Bucket=settings.bucket, Key=layout.access_marker(gone), Body=encode_marker(gone, 1.0)
    )
    report = sweep(bucket, layout)
    assert report.markers_removed == [layout.access_marker(gone)]
    assert set(read_last_access(bucket, layout)) == {study_uid("A")}


def test_refresh_is_refused_on_seaweedfs_unless_forced(s3_client, bucket, settings, studies):
    layout = KeyLayout(settings.prefix)
    mark(s3_client, settings, "A", time.time() + 60)
    keys = list_keys(s3_client, settings.bucket, layout.study_prefix(study_uid("A")))
    before = {k: s3_client.head_object(Bucket=settings.bucket, Key=k)["LastModified"] for k in keys}

    refused = sweep(bucket, layout, refresh_after=timedelta(0))
    assert refused.refreshed == [] and "SeaweedFS" in refused.refresh_note

    time.sleep(1.1)  # Last-Modified has one-second resolution
    forced = sweep(bucket, layout, refresh_after=timedelta(0), force_refresh=True)
    assert forced.refreshed == [study_uid("A")]  # B, C, D were never read: not refreshed
    for key in keys:
        head = s3_client.head_object(Bucket=settings.bucket, Key=key)
        assert head["LastModified"] > before[key]
        tags = s3_client.get_object_tagging(Bucket=settings.bucket, Key=key)["TagSet"]
        assert {"Key": RETENTION_TAG, "Value": "cache"} in tags
    frame = s3_client.head_object(Bucket=settings.bucket, Key=layout.frame_of(studies["A"], 1))
    assert frame["ContentType"].startswith(studies["A"].media_type)


def test_cli_sweep(s3_client, bucket, settings, studies, monkeypatch, s3_store, capsys):
    flags = ["--bucket", settings.bucket, "--prefix", settings.prefix]
    assert run_cli(["sweep", *flags], monkeypatch, s3_store) == 2
    assert run_cli(["sweep", "--max-bytes", "0", "--dry-run", *flags], monkeypatch, s3_store) == 0
    assert "would evict 4 studies" in capsys.readouterr().out
    assert stored_studies(s3_client, settings) == set("ABCD")
    pin(bucket, KeyLayout(settings.prefix), study_uid("B"))
    assert run_cli(["sweep", "--max-bytes", "0", *flags], monkeypatch, s3_store) == 1
    assert "still over budget" in capsys.readouterr().out
    assert stored_studies(s3_client, settings) == {"B"}


def test_a_key_that_may_not_read_tags_evicts_nothing(bucket, settings, studies, monkeypatch,
                                                     s3_store, capsys):
    """Real denied GetObjectTagging (a key with List+Write only): every study is skipped."""
    layout = KeyLayout(settings.prefix)
    pin(bucket, layout, study_uid("D"))
    blind = Bucket.from_settings(
        settings.with_overrides(
            aws_access_key_id=NO_READ.access_key, aws_secret_access_key=NO_READ.secret_key
        )
    )
    report = sweep(blind, layout, max_bytes=0)
    assert report.evicted == [] and not report.ok
    assert sorted(report.skipped) == sorted(study_uid(name) for name in "ABCD")
    assert "AccessDenied" in report.skipped[study_uid("D")]
    assert stored_studies(bucket.client, settings) == set("ABCD")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", NO_READ.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", NO_READ.secret_key)
    from framecdn.cli import main

    flags = ["--endpoint", settings.s3_endpoint, "--bucket", settings.bucket,
             "--prefix", settings.prefix]
    assert main(["sweep", "--max-bytes", "0", *flags]) == 1
    err = capsys.readouterr().err
    assert f"study {study_uid('D')}: its retention tag could not be read" in err
    assert "Traceback" not in err
    assert stored_studies(bucket.client, settings) == set("ABCD")


def test_a_bucket_whose_tag_reads_fail_for_one_study_keeps_it(bucket, settings, studies):
    """The same on the real store, with only the pinned study's tag read failing."""
    layout = KeyLayout(settings.prefix)
    pin(bucket, layout, study_uid("A"))
    real_tags = bucket.tags

    def tags(key: str) -> dict[str, str]:
        if study_uid("A") + "/" in key:
            raise StoreError(f"S3 at {bucket.endpoint} did not answer in time (GET tags of {key})")
        return real_tags(key)

    bucket.tags = tags  # type: ignore[method-assign]
    report = sweep(bucket, layout, max_bytes=0)
    assert sorted(c.study for c in report.evicted) == sorted(study_uid(n) for n in "BCD")
    assert stored_studies(bucket.client, settings) == {"A"}
    assert list(report.skipped) == [study_uid("A")]
