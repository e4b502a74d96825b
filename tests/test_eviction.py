"""Erase-now and pinning against the real SeaweedFS, with real ingested instances."""

from __future__ import annotations

import pytest

from framecdn.cli.eviction import eviction_summary
from framecdn.errors import UsageError
from framecdn.framestore.access import encode_marker
from framecdn.framestore.keys import InvalidUID, KeyLayout
from framecdn.framestore.retention import RETENTION_TAG
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance.eviction import NothingStored, evict
from framecdn.maintenance.pinning import pin
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys, run_cli

STUDY, OTHER_STUDY = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.2"
SERIES_A, SERIES_B = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"


@pytest.fixture
def stored(settings, tmp_path):
    """Study 1 with two series (one instance each), study 2 with one instance."""

    def one(name: str, study: str, series: str, sop: str, frames: int = 3):
        generated = write_tomosynthesis(
            tmp_path / f"{name}.dcm", frames=frames, rows=32, columns=32,
            study_uid=study, series_uid=series, sop_uid=sop,
        )
        return ingest_file(generated.path, settings)

    return {
        "a": one("a", STUDY, SERIES_A, f"{SERIES_A}.1"),
        "b": one("b", STUDY, SERIES_B, f"{SERIES_B}.1", frames=2),
        "c": one("c", OTHER_STUDY, f"{OTHER_STUDY}.1", f"{OTHER_STUDY}.1.1"),
    }


def tags_of(client, bucket: str, keys: list[str]) -> set[str]:
    values = set()
    for key in keys:
        tagset = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        values |= {t["Value"] for t in tagset if t["Key"] == RETENTION_TAG}
    return values


def test_ingest_tags_everything_cache(s3_client, settings, stored):
    keys = list_keys(s3_client, settings.bucket, KeyLayout(settings.prefix).all_studies())
    assert len(keys) == 6 + 5 + 6  # frames, metadata, part10, index
    assert tags_of(s3_client, settings.bucket, keys) == {"cache"}


def test_evict_study_removes_everything_of_it_and_nothing_else(s3_client, bucket, settings, stored):
    layout = KeyLayout(settings.prefix)
    marker = layout.access_marker(STUDY)
    s3_client.put_object(Bucket=settings.bucket, Key=marker, Body=encode_marker(STUDY, 1.0))

    report = evict(bucket, layout, study=STUDY)

    assert report.instances == sorted([stored["a"].key, stored["b"].key], key=lambda k: k.series)
    assert report.objects == 11
    assert report.bytes == sum(
        i.total_frame_bytes + i.metadata_size + len(i.to_json())
        + (i.part10.size if i.part10 else 0)
        for i in (stored["a"], stored["b"])
    )
    assert list_keys(s3_client, settings.bucket, layout.study_prefix(STUDY)) == []
    assert list_keys(s3_client, settings.bucket, marker) == []
    assert len(list_keys(s3_client, settings.bucket, layout.study_prefix(OTHER_STUDY))) == 6


def test_evict_series_and_instance_are_narrow(s3_client, bucket, settings, stored):
    layout = KeyLayout(settings.prefix)
    evict(bucket, layout, study=STUDY, series=SERIES_A)
    assert list_keys(s3_client, settings.bucket, layout.series_prefix(STUDY, SERIES_A)) == []
    assert len(list_keys(s3_client, settings.bucket, layout.series_prefix(STUDY, SERIES_B))) == 5

    # An instance alone (no study given) is found by searching the prefix.
    report = evict(bucket, layout, instance=stored["c"].sop_instance_uid)
    assert report.instances == [stored["c"].key]
    assert list_keys(s3_client, settings.bucket, layout.study_prefix(OTHER_STUDY)) == []
    assert len(list_keys(s3_client, settings.bucket, layout.all_studies())) == 5


def test_dry_run_deletes_nothing(s3_client, bucket, settings, stored):
    layout = KeyLayout(settings.prefix)
    report = evict(bucket, layout, study=STUDY, dry_run=True)
    assert report.objects == 11 and report.dry_run
    assert "would remove 2 instances of 1 study: 11 objects" in eviction_summary(report)
    assert len(list_keys(s3_client, settings.bucket, layout.study_prefix(STUDY))) == 11


def test_evict_of_nothing_says_so(s3_client, bucket, settings):
    with pytest.raises(NothingStored):
        evict(bucket, KeyLayout(settings.prefix), study="1.2.3.4")
    with pytest.raises(UsageError):
        evict(bucket, KeyLayout(settings.prefix))
    with pytest.raises(InvalidUID):
        evict(bucket, KeyLayout(settings.prefix), study="../etc")


def test_delete_keys_batches_over_the_limit(s3_client, bucket, settings):
    keys = [f"{settings.prefix}/batch/{n}" for n in range(7)]
    for key in keys:
        s3_client.put_object(Bucket=settings.bucket, Key=key, Body=b"x")
    assert bucket.delete(keys, batch_size=3) == 7
    assert list_keys(s3_client, settings.bucket, f"{settings.prefix}/batch/") == []


def test_pin_and_unpin_retag_a_study_keeping_other_tags(s3_client, bucket, settings, stored):
    layout = KeyLayout(settings.prefix)
    study_keys = list_keys(s3_client, settings.bucket, layout.study_prefix(STUDY))
    some = study_keys[0]
    s3_client.put_object_tagging(
        Bucket=settings.bucket,
        Key=some,
        Tagging={
            "TagSet": [{"Key": RETENTION_TAG, "Value": "cache"}, {"Key": "site", "Value": "x"}]
        },
    )

    report = pin(bucket, layout, STUDY)
    assert (report.value, report.instances, report.objects) == ("pinned", 2, 11)
    assert tags_of(s3_client, settings.bucket, study_keys) == {"pinned"}
    other = list_keys(s3_client, settings.bucket, layout.study_prefix(OTHER_STUDY))
    assert tags_of(s3_client, settings.bucket, other) == {"cache"}
    tagset = s3_client.get_object_tagging(Bucket=settings.bucket, Key=some)["TagSet"]
    assert {"Key": "site", "Value": "x"} in tagset

    pin(bucket, layout, STUDY, unpin=True)
    assert tags_of(s3_client, settings.bucket, study_keys) == {"cache"}


def test_pin_series_only(s3_client, bucket, settings, stored):
    layout = KeyLayout(settings.prefix)
    pin(bucket, layout, STUDY, series=SERIES_B)
    series_a = list_keys(s3_client, settings.bucket, layout.series_prefix(STUDY, SERIES_A))
    series_b = list_keys(s3_client, settings.bucket, layout.series_prefix(STUDY, SERIES_B))
    assert tags_of(s3_client, settings.bucket, series_a) == {"cache"}
    assert tags_of(s3_client, settings.bucket, series_b) == {"pinned"}


def test_cli_pin_and_evict(s3_client, bucket, settings, stored, monkeypatch, s3_store, capsys):
    flags = ["--bucket", settings.bucket, "--prefix", settings.prefix]
    layout = KeyLayout(settings.prefix)
    assert run_cli(["pin", STUDY, *flags], monkeypatch, s3_store) == 0
    assert "tagged 11 objects of 2 instances" in capsys.readouterr().out

    assert run_cli(["evict", OTHER_STUDY, "--dry-run", *flags], monkeypatch, s3_store) == 0
    out = capsys.readouterr().out
    assert f"would remove {layout.instance_prefix(stored['c'].key)}" in out
    assert len(list_keys(s3_client, settings.bucket, layout.study_prefix(OTHER_STUDY))) == 6

    assert run_cli(["evict", OTHER_STUDY, *flags], monkeypatch, s3_store) == 0
    assert "removed 1 instance of 1 study: 6 objects" in capsys.readouterr().out
    assert list_keys(s3_client, settings.bucket, layout.study_prefix(OTHER_STUDY)) == []
    assert run_cli(["evict", OTHER_STUDY, *flags], monkeypatch, s3_store) == 1
