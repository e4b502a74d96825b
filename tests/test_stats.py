"""``framecdn stats`` against the real SeaweedFS: counts, ages, pinned bytes, expiry forecast."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from framecdn.cli.stats import render
from framecdn.framestore.bucket import Bucket, StoredObject
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance import lifecycle, stats
from framecdn.maintenance.expiry import expires_at
from framecdn.maintenance.inventory import take_inventory
from framecdn.maintenance.pinning import pin
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import run_cli

ROOT = "1.2.826.0.1.3680043.30"


def ingest(tmp_path, settings, n: int, frames: int = 3, side: int = 32):
    uid = f"{ROOT}.{n}"
    generated = write_tomosynthesis(
        tmp_path / f"{n}-{uuid.uuid4().hex[:8]}.dcm", frames=frames, rows=side, columns=side,
        study_uid=uid, series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1",
    )
    return ingest_file(generated.path, settings)


def instance_bytes(index) -> int:
    part10 = index.part10.size if index.part10 else 0
    return index.total_frame_bytes + index.metadata_size + part10 + len(index.to_json())


def test_stats_counts_ages_pinned_and_expiry(s3_client, own_bucket, tmp_path):
    layout = KeyLayout(own_bucket.prefix)
    store = Bucket(s3_client, own_bucket.bucket)
    first = ingest(tmp_path, own_bucket, 1, side=64)
    second = ingest(tmp_path, own_bucket, 2, frames=2, side=64)
    pin(store, layout, second.study_instance_uid)
    # frames of 64*64*2 = 8192 bytes: a 5000-byte tier catches frames, not metadata or index
    assert first.metadata_size < 5000 and len(first.to_json()) < 5000
    policy = lifecycle.Policy(days=30, large_bytes=5000, large_days=7)
    lifecycle.apply(store, layout, policy)

    now = datetime.now(UTC)
    [found] = stats.collect(store, layout, now=now)

    # frames, metadata and index, and a part10 object each
    assert (found.studies, found.instances, found.objects) == (2, 2, 5 + 4 + 2)
    assert found.bytes == instance_bytes(first) + instance_bytes(second)
    assert found.oldest.study == first.study_instance_uid
    assert found.newest.study == second.study_instance_uid
    assert (found.pinned_studies, found.pinned_bytes) == (1, instance_bytes(second))
    assert found.incomplete_instances == 0
    # Only the first (cache) study expires: its frames within 7 days (+ rounding to midnight),
    # everything of it within 30 + 1 days; nothing pinned ever.
    assert found.expiring_bytes[1] == 0
    frame_bytes = first.total_frame_bytes
    assert stats.summarize(
        take_inventory(store, layout),
        store.lifecycle_rules(),
        now=now + timedelta(days=1),
    ).expiring_bytes[7] == frame_bytes
    assert found.expiring_bytes[30] == frame_bytes
    later = stats.summarize(
        take_inventory(store, layout),
        store.lifecycle_rules(),
        now=now + timedelta(days=2),
    )
    assert later.expiring_bytes[30] == instance_bytes(first)

    text = render(found)
    assert f"oldest study {first.study_instance_uid}" in text
    assert "pinned (framecdn-retention=pinned): 1 study," in text
    assert "2 studies, 2 instances, 11 objects" in text


def test_expires_at_follows_aws_rounding_and_filters():
    obj = StoredObject(
        "p/studies/1/series/2/instances/3/frames/1",
        5000,
        datetime(2026, 1, 10, 15, 30, tzinfo=UTC),
    )
    rules = lifecycle.build_rules(
        KeyLayout("p"), lifecycle.Policy(days=30, large_bytes=4000, large_days=7)
    )
    assert expires_at(obj, "cache", rules) == datetime(2026, 1, 18, tzinfo=UTC)
    assert expires_at(obj, "pinned", rules) is None
    small = StoredObject(obj.key, 10, obj.last_modified)
    assert expires_at(small, "cache", rules) == datetime(2026, 2, 10, tzinfo=UTC)
    elsewhere = StoredObject("q/" + obj.key[2:], 10, obj.last_modified)
    assert expires_at(elsewhere, "cache", rules) is None


def test_incomplete_instances_are_counted(s3_client, settings, tmp_path):
    layout = KeyLayout(settings.prefix)
    index = ingest(tmp_path, settings, 3)
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.frame_of(index, 3))
    [found] = stats.collect(Bucket(s3_client, settings.bucket), layout)
    assert "incomplete instances" in render(found)
    assert found.incomplete_instances == 1


def test_all_prefixes_and_cli_json(s3_client, own_bucket, tmp_path, monkeypatch, s3_store, capsys):
    clinic_a = own_bucket.with_overrides(prefix="clinic-a")
    clinic_b = own_bucket.with_overrides(prefix="clinic-b/site-1")
    ingest(tmp_path, clinic_a, 4)
    ingest(tmp_path, clinic_b, 5)
    ingest(tmp_path, clinic_b, 6)
    s3_client.put_object(Bucket=own_bucket.bucket, Key="unrelated/file", Body=b"x")

    found = {s.prefix: s for s in stats.collect(Bucket(s3_client, own_bucket.bucket), None)}
    assert set(found) == {"clinic-a/", "clinic-b/site-1/"}
    assert found["clinic-b/site-1/"].studies == 2

    argv = ["stats", "--all-prefixes", "--json", "--bucket", own_bucket.bucket]
    assert run_cli(argv, monkeypatch, s3_store) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["prefix"] for p in printed] == ["clinic-a/", "clinic-b/site-1/"]
    assert printed[1]["objects"] == 12
