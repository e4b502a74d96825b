"""Lifecycle rules on the real SeaweedFS: stored as meant, merged with foreign rules, enforced.

Lifecycle configuration is bucket-wide, so every test here works in a bucket of its own.
"""

from __future__ import annotations

from datetime import date

import pytest

from framecdn.cli.lifecycle import show
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.framestore.retention import RETENTION_TAG
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance import lifecycle
from framecdn.maintenance.pinning import pin
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys, run_cli

FOREIGN = {
    "ID": "logs-cleanup",
    "Status": "Enabled",
    "Filter": {"Prefix": "logs/"},
    "Expiration": {"Days": 3},
}


def test_rules_are_exactly_prefix_and_tag_scoped():
    rules = lifecycle.build_rules(
        KeyLayout("clinic-a"), lifecycle.Policy(days=30, large_bytes=1_000_000, large_days=7)
    )
    assert [r["ID"] for r in rules] == [
        "framecdn:clinic-a/:expire",
        "framecdn:clinic-a/:expire-large",
        "framecdn:clinic-a/:abort-multipart",
    ]
    expire, large, abort = rules
    assert expire["Filter"] == {
        "And": {"Prefix": "clinic-a/studies/", "Tags": [{"Key": RETENTION_TAG, "Value": "cache"}]}
    }
    assert expire["Expiration"] == {"Days": 30}
    assert large["Filter"]["And"]["ObjectSizeGreaterThan"] == 1_000_000
    assert large["Expiration"] == {"Days": 7}
    assert abort["Filter"] == {"Prefix": "clinic-a/studies/"}
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_policy_refuses_nonsense():
    with pytest.raises(lifecycle.InvalidPolicy):
        lifecycle.Policy(days=None, date=None)
    with pytest.raises(lifecycle.InvalidPolicy):
        lifecycle.Policy(days=7, large_bytes=1000, large_days=7)  # tier must be sooner
    with pytest.raises(lifecycle.InvalidPolicy):
        lifecycle.Policy(days=7, large_bytes=1000)


def test_one_prefix_rules_never_claim_a_longer_prefix():
    rule = {"ID": "framecdn:a/b/:expire"}
    assert lifecycle.is_ours(rule, KeyLayout("a/b"))
    assert not lifecycle.is_ours(rule, KeyLayout("a"))
    assert not lifecycle.is_ours(rule, KeyLayout(""))


def test_no_configuration_reads_as_no_rules(s3_client, own_bucket):
    assert Bucket(s3_client, own_bucket.bucket).lifecycle_rules() == []


def test_apply_is_idempotent_and_keeps_foreign_rules(s3_client, own_bucket):
    bucket = own_bucket.bucket
    store = Bucket(s3_client, bucket)
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]}
    )
    clinic_a, clinic_b = KeyLayout("clinic-a"), KeyLayout("clinic-b")
    policy = lifecycle.Policy(days=30, large_bytes=1 << 20, large_days=7)

    assert lifecycle.apply(store, clinic_a, policy).changed
    assert not lifecycle.apply(store, clinic_a, policy).changed
    assert lifecycle.apply(store, clinic_b, lifecycle.Policy(days=90)).changed

    rules = {r["ID"]: r for r in store.lifecycle_rules()}
    assert set(rules) == {
        "logs-cleanup",
        "framecdn:clinic-a/:expire",
        "framecdn:clinic-a/:expire-large",
        "framecdn:clinic-a/:abort-multipart",
        "framecdn:clinic-b/:expire",
        "framecdn:clinic-b/:abort-multipart",
    }
    assert rules["logs-cleanup"]["Filter"] == {"Prefix": "logs/"}
    assert rules["logs-cleanup"]["Expiration"] == {"Days": 3}

    # A new policy replaces our rules for that prefix, and only them.
    assert lifecycle.apply(store, clinic_a, lifecycle.Policy(days=10)).changed
    rules = {r["ID"]: r for r in store.lifecycle_rules()}
    assert rules["framecdn:clinic-a/:expire"]["Expiration"] == {"Days": 10}
    assert "framecdn:clinic-a/:expire-large" not in rules
    assert rules["framecdn:clinic-b/:expire"]["Expiration"] == {"Days": 90}


def test_remove_takes_only_ours_and_is_idempotent(s3_client, own_bucket):
    bucket = own_bucket.bucket
    store = Bucket(s3_client, bucket)
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]}
    )
    layout, other = KeyLayout("clinic-a"), KeyLayout("clinic-b")
    lifecycle.apply(store, layout, lifecycle.Policy(days=30))
    lifecycle.apply(store, other, lifecycle.Policy(days=30))

    assert lifecycle.remove(store, layout).changed
    assert not lifecycle.remove(store, layout).changed
    ids = {r["ID"] for r in store.lifecycle_rules()}
    assert ids == {
        "logs-cleanup", "framecdn:clinic-b/:expire", "framecdn:clinic-b/:abort-multipart"
    }


def test_remove_of_the_last_rules_deletes_the_configuration(s3_client, own_bucket):
    layout = KeyLayout(own_bucket.prefix)
    store = Bucket(s3_client, own_bucket.bucket)
    lifecycle.apply(store, layout, lifecycle.Policy(days=5))
    assert lifecycle.remove(store, layout).changed
    assert store.lifecycle_rules() == []


def test_show_says_what_rules_mean(s3_client, own_bucket):
    bucket = own_bucket.bucket
    store = Bucket(s3_client, bucket)
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]}
    )
    layout = KeyLayout("clinic-a")
    lifecycle.apply(store, layout, lifecycle.Policy(days=30, large_bytes=1_000_000, large_days=7))
    text = show(store.lifecycle_rules(), layout)
    assert "[foreign] logs-cleanup: objects under 'logs/' are deleted 3 days after" in text
    assert (
        "objects under 'clinic-a/studies/' tagged framecdn-retention=cache are deleted "
        "30 days after they were written (framecdn-retention=pinned objects are kept)"
    ) in text
    assert "larger than 1,000,000 bytes are deleted 7 days after" in text
    assert "unfinished multipart uploads under 'clinic-a/studies/' are aborted 1 day" in text
    assert show([], layout).startswith("no lifecycle rules")


def test_cli_apply_show_remove(s3_client, own_bucket, monkeypatch, s3_store, capsys):
    flags = ["--bucket", own_bucket.bucket, "--prefix", "clinic-z"]
    assert run_cli(["lifecycle", "apply", "--days", "14", *flags], monkeypatch, s3_store) == 0
    assert "rules installed" in capsys.readouterr().out
    assert run_cli(["lifecycle", "apply", "--days", "14", *flags], monkeypatch, s3_store) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert run_cli(["lifecycle", "show", *flags], monkeypatch, s3_store) == 0
    assert "deleted 14 days after they were written" in capsys.readouterr().out
    assert run_cli(["lifecycle", "apply", "--large-days", "3", *flags], monkeypatch, s3_store) == 2
    assert run_cli(["lifecycle", "remove", *flags], monkeypatch, s3_store) == 0
    assert Bucket(s3_client, own_bucket.bucket).lifecycle_rules() == []


def _ingest(tmp_path, settings, name: str, **uids):
    generated = write_tomosynthesis(tmp_path / f"{name}.dcm", frames=3, rows=32, columns=32, **uids)
    return ingest_file(generated.path, settings)


def test_lifecycle_pass_expires_cache_keeps_pinned_and_other_prefixes(
    s3_store, s3_client, own_bucket, tmp_path
):
    """The real thing: a past Expiration.Date plus SeaweedFS's own pass deletes objects."""
    bucket = own_bucket.bucket
    store = Bucket(s3_client, bucket)
    layout = KeyLayout(own_bucket.prefix)
    other_clinic = own_bucket.with_overrides(prefix=f"{own_bucket.prefix}-other")

    cached = _ingest(tmp_path, own_bucket, "cached")
    kept = _ingest(tmp_path, own_bucket, "kept")
    elsewhere = _ingest(tmp_path, other_clinic, "elsewhere")
    store.put("logs/today", b"x", "text/plain")  # tagged cache, but outside the prefix
    pin(store, layout, kept.study_instance_uid)

    lifecycle.apply(store, layout, lifecycle.Policy(days=None, date=date(2020, 1, 1)))
    s3_store.run_lifecycle_pass()

    assert list_keys(s3_client, bucket, layout.instance_prefix(cached.key)) == []
    kept_keys = list_keys(s3_client, bucket, layout.instance_prefix(kept.key))
    assert len(kept_keys) == kept.number_of_frames + 3  # frames, metadata, part10, index
    other_layout = KeyLayout(other_clinic.prefix)
    assert len(list_keys(s3_client, bucket, other_layout.instance_prefix(elsewhere.key))) == 6
    assert list_keys(s3_client, bucket, "logs/") == ["logs/today"]
