"""Maintenance decisions on an in-memory bucket: what is evicted, kept, retagged, in which order.

The objects are written by the real Ingestor (into a FakeBucket), so keys, tags and
indexes are exactly what production writes; the fake then fails chosen reads the way a
denying or timing-out store would. The same paths against SeaweedFS are in
test_sweeper.py, test_eviction.py and test_stats.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.bucket import StoredObject
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.retention import CACHE, PINNED, RETENTION_TAG
from framecdn.ingest.pipeline import Ingestor
from framecdn.maintenance import lifecycle
from framecdn.maintenance.eviction import evict
from framecdn.maintenance.expiry import expires_at
from framecdn.maintenance.inventory import InstanceInventory, read_details, take_inventory
from framecdn.maintenance.lifecycle import RuleFilter
from framecdn.maintenance.pinning import pin
from framecdn.maintenance.stats import collect
from framecdn.maintenance.sweeper import sweep
from framecdn.synthetic import write_tomosynthesis
from tests.fake_bucket import FakeBucket

PREFIX = "clinic"
ROOT = "1.2.826.0.1.3680043.40"
LAYOUT = KeyLayout(PREFIX)


def uid(name: str) -> str:
    return f"{ROOT}.{ord(name)}"


@pytest.fixture
def fake(tmp_path) -> FakeBucket:
    """Studies A, B, C (one 3-frame instance each), ingested by the real Ingestor."""
    bucket = FakeBucket()
    with Ingestor(Settings(prefix=PREFIX, ingest_workers=2), bucket) as ingestor:
        for name in "ABC":
            generated = write_tomosynthesis(
                tmp_path / f"{name}.dcm", frames=3, rows=16, columns=16,
                study_uid=uid(name), series_uid=f"{uid(name)}.1", sop_uid=f"{uid(name)}.1.1",
            )
            result = ingestor.ingest(generated.path)
            assert result.status == "ingested", result.reason
    return bucket


def index_key(name: str) -> str:
    return LAYOUT.index(InstanceKey(uid(name), f"{uid(name)}.1", f"{uid(name)}.1.1"))


def frame_key(bucket: FakeBucket, name: str, number: int) -> str:
    """Frame ``number`` of study ``name``, in the generation its index names."""
    index = InstanceIndex.from_json(bucket.objects[index_key(name)].body)
    return LAYOUT.frame_of(index, number)


def stored(bucket: FakeBucket) -> set[str]:
    return {name for name in "ABC" if any(uid(name) in key for key in bucket.objects)}


def test_ingest_writes_through_the_bucket_with_the_index_last(fake):
    puts = [key for op, key in fake.calls if op == "put" and uid("A") in key]
    assert puts[-1] == index_key("A") and puts[-2].endswith("/part10")
    assert puts[-3].endswith("/metadata")
    assert {obj.tags[RETENTION_TAG] for obj in fake.objects.values()} == {CACHE}
    index = InstanceIndex.from_json(fake.objects[index_key("A")].body)
    assert index.number_of_frames == 3


def test_a_pinned_study_whose_tags_cannot_be_read_is_never_swept(fake):
    pin(fake, LAYOUT, uid("A"))
    fake.fail("tags", lambda key: key == index_key("A"))  # e.g. GetObjectTagging denied

    report = sweep(fake, LAYOUT, max_bytes=0)

    assert [c.study for c in report.evicted] == [uid("B"), uid("C")]
    assert stored(fake) == {"A"}
    assert list(report.skipped) == [uid("A")] and "AccessDenied" in report.skipped[uid("A")]
    assert not report.ok


def test_an_unpinned_study_whose_tags_cannot_be_read_is_not_swept_either(fake):
    """Unknown retention is never "cache", whatever the tag really is."""
    fake.fail("tags", lambda key: key == index_key("B"))
    report = sweep(fake, LAYOUT, max_bytes=0)
    assert stored(fake) == {"B"} and uid("B") in report.skipped


def test_a_failed_index_read_is_not_taken_for_a_half_evicted_instance(fake):
    fake.fail("get", lambda key: key == index_key("C"))
    report = sweep(fake, LAYOUT, max_bytes=10**9)
    assert report.repaired == [] and stored(fake) == set("ABC")
    assert uid("C") in report.skipped


def test_a_real_half_evicted_instance_is_repaired(fake):
    del fake.objects[frame_key(fake, "B", 2)]
    report = sweep(fake, LAYOUT, max_bytes=10**9)
    assert [key.study for key in report.repaired] == [uid("B")] and report.ok
    assert stored(fake) == {"A", "C"}


def test_a_failing_marker_read_stops_the_sweep_before_any_eviction(fake):
    fake.put(LAYOUT.access_marker(uid("A")), b'{"study": "x", "last_access": 1}', "x")
    del fake.objects[frame_key(fake, "B", 2)]  # would be repaired
    fake.fail("get", lambda key: "/access/" in key)
    before = dict(fake.objects)
    with pytest.raises(StoreError):
        sweep(fake, LAYOUT, max_bytes=0)
    assert fake.objects.keys() == before.keys()


def test_an_object_gone_since_the_listing_is_vanished_not_an_error():
    instance = InstanceInventory(InstanceKey("1.2", "1.2.3", "1.2.3.4"))
    instance.index_object = StoredObject("gone", 1, datetime.now(UTC))
    instance.objects.append(instance.index_object)
    read_details(FakeBucket(), instance)
    assert instance.vanished and instance.read_error is None and not instance.cached


def test_stats_report_unreadable_studies(fake):
    fake.fail("tags", lambda key: key == index_key("C"))
    [found] = collect(fake, LAYOUT)
    assert found.studies == 3 and list(found.unreadable) == [uid("C")]


def test_pin_retags_every_index_after_every_other_object(fake):
    fake.calls.clear()
    report = pin(fake, LAYOUT, uid("A"))
    retagged = [key for op, key in fake.calls if op == "set_tags"]
    assert len(retagged) == report.objects == 6
    assert retagged[-1] == index_key("A")
    assert {fake.objects[k].tags[RETENTION_TAG] for k in retagged} == {PINNED}


def test_evict_deletes_every_index_before_anything_else(fake):
    fake.calls.clear()
    evict(fake, LAYOUT, study=uid("B"))
    deleted = [key for op, key in fake.calls if op == "delete"]
    assert deleted[0] == index_key("B")
    assert all(not key.endswith("index.json") for key in deleted[1:])
    assert stored(fake) == {"A", "C"}


def test_a_failed_upload_removes_what_the_instance_wrote(tmp_path):
    bucket = FakeBucket()
    bucket.fail("put", lambda key: key.endswith("/frames/3"))
    generated = write_tomosynthesis(tmp_path / "t.dcm", frames=4, rows=16, columns=16)
    with Ingestor(Settings(prefix=PREFIX, ingest_workers=1), bucket) as ingestor:
        result = ingestor.ingest(generated.path)
    assert result.status == "failed" and "AccessDenied" in result.reason
    assert "\n" not in result.reason
    assert any(op == "put" and key.endswith("/frames/1") for op, key in bucket.calls)
    assert bucket.objects == {}


def test_a_failing_stored_index_read_fails_the_instance_instead_of_rewriting_it(tmp_path):
    """Only "no such key" means not stored: a denied read is an error, not a fresh start."""
    bucket = FakeBucket()
    bucket.fail("get", lambda key: key.endswith("index.json"))
    generated = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=16, columns=16)
    with Ingestor(Settings(prefix=PREFIX), bucket) as ingestor:
        result = ingestor.ingest(generated.path)
    assert result.status == "failed" and not any(op == "put" for op, _ in bucket.calls)


class DroppingStore(FakeBucket):
    """A store that accepts lifecycle rules but silently drops their tag filters."""

    def put_lifecycle_rules(self, rules):
        kept = []
        for rule in rules:
            rule = dict(rule)
            flt = rule.get("Filter", {})
            if "And" in flt:
                rule["Filter"] = {"Prefix": flt["And"]["Prefix"]}
            kept.append(rule)
        super().put_lifecycle_rules(kept)


def test_apply_takes_back_rules_the_store_did_not_keep_as_written():
    store = DroppingStore()
    foreign = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
               "Expiration": {"Days": 3}}
    store.rules = [foreign]
    with pytest.raises(lifecycle.LifecycleNotHonoured):
        lifecycle.apply(store, LAYOUT, lifecycle.Policy(days=30))
    assert store.rules == [foreign]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"Prefix": "a/"}, RuleFilter(prefix="a/")),
        ({"Filter": {"Prefix": "a/"}}, RuleFilter(prefix="a/")),
        ({"Filter": {"Tag": {"Key": "k", "Value": "v"}}}, RuleFilter(tags=(("k", "v"),))),
        (
            {"Filter": {"And": {"Prefix": "a/", "Tags": [{"Key": "k", "Value": "v"}],
                                "ObjectSizeGreaterThan": 10, "ObjectSizeLessThan": "99"}}},
            RuleFilter("a/", (("k", "v"),), 10, 99),
        ),
        ({"Filter": {}}, RuleFilter()),
    ],
)
def test_one_reading_of_every_filter_spelling(rule, expected):
    assert RuleFilter.of(rule) == expected


def test_expiry_and_show_read_filters_the_same_way():
    from framecdn.cli.lifecycle import describe

    rule = {"ID": "x", "Status": "Enabled", "Expiration": {"Days": 1},
            "Filter": {"Tag": {"Key": RETENTION_TAG, "Value": CACHE}}}
    obj = StoredObject("p/studies/1/x", 5, datetime(2026, 1, 1, 12, tzinfo=UTC))
    assert expires_at(obj, CACHE, [rule]) == datetime(2026, 1, 3, tzinfo=UTC)
    assert expires_at(obj, PINNED, [rule]) is None
    assert "ALL objects in the bucket tagged framecdn-retention=cache" in describe(rule)
    other_tag = {**rule, "Filter": {"Tag": {"Key": "team", "Value": "x"}}}
    assert expires_at(obj, CACHE, [other_tag]) is None


def test_inventory_skips_keys_that_are_not_instance_objects(fake):
    fake.put(f"{PREFIX}/studies/{uid('A')}/notes.txt", b"x", "text/plain")
    fake.put(f"{PREFIX}/studies/1.2/series/1.2.3/instances/1.2.3.4/frames/0", b"x", "x")
    inventory = take_inventory(fake, LAYOUT)
    assert sorted(inventory.studies) == sorted(uid(n) for n in "ABC")
    assert inventory.object_count == 18


def test_object_missing_is_the_only_missing():
    assert FakeBucket.is_missing(ObjectMissing("k"))
    assert not FakeBucket.is_missing(StoreError("denied"))
