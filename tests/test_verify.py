"""``framecdn verify``: each kind of damage a test inflicts is found, and ``--repair`` fixes it.

Real SeaweedFS, the real CLI (in-process, through ``main``). Damage is done with plain
S3 calls: a frame deleted, its bytes changed, cut short; objects without an index; a
generation the index does not name; an index whose objects are gone; an index that is
not one; a source file that differs. A healthy study exits 0 and says so; damage left
unrepaired exits 1; objects younger than the grace are left alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance.verify import repair, verify
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis
from tests.conftest import list_keys, run_cli
from tests.origin_fixtures import run_origin

STUDY = "1.2.826.0.1.3680043.55"


def make(path: Path, number: int, seed: int = 0) -> GeneratedInstance:
    """Instance ``number`` of the test study: 3 frames of 32 x 32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tomosynthesis(
        path, frames=3, rows=32, columns=32, seed=seed or number,
        study_uid=STUDY, series_uid=f"{STUDY}.1", sop_uid=f"{STUDY}.1.{number}",
    )


@pytest.fixture
def stored(
    settings: Settings, tmp_path: Path
) -> dict[int, tuple[GeneratedInstance, InstanceIndex]]:
    """Three instances of one study, ingested."""
    found = {}
    for number in (1, 2, 3):
        made = make(tmp_path / f"i{number}.dcm", number)
        found[number] = (made, ingest_file(made.path, settings))
    return found


def cli(
    monkeypatch, s3_store: EmbeddedS3, settings: Settings, capsys, *args: str
) -> tuple[int, str]:
    monkeypatch.setenv("FRAMECDN_PREFIX", settings.prefix)
    code = run_cli(["verify", *args], monkeypatch, s3_store)
    return code, capsys.readouterr().out


def put(s3_client, settings: Settings, key: str, body: bytes) -> None:
    s3_client.put_object(Bucket=settings.bucket, Key=key, Body=body)


def get(s3_client, settings: Settings, key: str) -> bytes:
    return s3_client.get_object(Bucket=settings.bucket, Key=key)["Body"].read()


def test_a_healthy_study_exits_0_and_says_so(monkeypatch, s3_store, settings, capsys, stored):
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    assert code == 0, out
    assert out.strip().endswith(": healthy")
    assert "checked 3 instances (9 frames" in out
    code, out = cli(monkeypatch, s3_store, settings, capsys, "--all", "--sizes-only")
    assert code == 0 and "healthy" in out and "0 B read back" in out


@pytest.mark.parametrize(
    ("damage", "finding"),
    [
        ("delete", "frame 2: missing"),
        ("corrupt", "frame 2: SHA-256 differs"),
        ("truncate", "frame 2: 2047 bytes, the index says 2048"),
    ],
)
def test_a_damaged_frame_is_found_and_repair_removes_the_instance_index_first(
    monkeypatch, s3_store, settings, capsys, s3_client, stored, damage, finding
):
    layout = KeyLayout(settings.prefix)
    index = stored[2][1]
    key = layout.frame_of(index, 2)
    if damage == "delete":
        s3_client.delete_object(Bucket=settings.bucket, Key=key)
    elif damage == "corrupt":
        body = bytearray(get(s3_client, settings, key))
        body[100] ^= 0xFF
        put(s3_client, settings, key, bytes(body))
    else:
        put(s3_client, settings, key, get(s3_client, settings, key)[:-1])

    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith("DAMAGED")]
    assert index.sop_instance_uid in line and finding in line
    assert "1 instance with findings (run with --repair)" in out

    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--repair")
    assert code == 0, out
    assert "REPAIRED" in out and "removed, index first" in out
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(index.key)) == []
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    assert code == 0 and "checked 2 instances" in out and "healthy" in out


def test_repair_ingests_a_damaged_instance_again_from_its_source(
    monkeypatch, s3_store, settings, capsys, s3_client, stored, tmp_path
):
    layout = KeyLayout(settings.prefix)
    made, index = stored[1]
    body = bytearray(get(s3_client, settings, layout.frame_of(index, 3)))
    body[0] ^= 0x01
    put(s3_client, settings, layout.frame_of(index, 3), bytes(body))
    source = str(tmp_path)  # the directory holding the three source files

    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--source", source)
    assert code == 1 and "frame 3: SHA-256 differs" in out
    assert "3 compared with their source" in out
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--source", source, "--repair")
    assert code == 0, out
    assert "ingested again from its source" in out
    again = InstanceIndex.from_json(get(s3_client, settings, layout.index(index.key)))
    assert again.generation != index.generation
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        for number in (1, 2, 3):
            url = (
                f"{served.root}/studies/{STUDY}/series/{STUDY}.1/instances/{STUDY}.1.1"
                f"/frames/{number}"
            )
            answer = http.get(url, headers={"Accept": "application/octet-stream"})
            assert answer.content == made.frame(number)
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--source", source)
    assert code == 0 and "healthy" in out


def test_stored_bytes_that_are_not_the_sources_are_found(
    monkeypatch, s3_store, settings, capsys, s3_client, stored, tmp_path
):
    """Consistent with its index, but not what the source file holds (a wrong ingest)."""
    other = make(tmp_path / "other" / "i2.dcm", 2, seed=99)  # same UIDs, other pixels
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--source", str(other.path))
    assert code == 1
    differs = [line for line in out.splitlines() if line.startswith("DIFFERS")]
    assert len(differs) == 3 and all(f"{STUDY}.1.2" in line for line in differs)
    assert "1 compared with their source" in out
    code, out = cli(
        monkeypatch, s3_store, settings, capsys, STUDY, "--source", str(other.path), "--repair"
    )
    assert code == 0, out
    layout = KeyLayout(settings.prefix)
    index = InstanceIndex.from_json(get(s3_client, settings, layout.index(stored[2][1].key)))
    assert get(s3_client, settings, layout.frame_of(index, 1)) == other.frame(1)


def test_metadata_damage_and_an_invalid_index_are_found(
    monkeypatch, s3_store, settings, capsys, s3_client, stored
):
    layout = KeyLayout(settings.prefix)
    put(s3_client, settings, layout.metadata_of(stored[1][1]), b"[]")
    put(s3_client, settings, layout.index(stored[3][1].key), b'{"schema": 2, "broken": true}')
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    assert code == 1
    assert f"{STUDY}.1.1: metadata:" in out
    assert f"{STUDY}.1.3: index.json names no valid generation" in out
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--repair")
    assert code == 0, out
    key = stored[1][1].key
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(key)) == []
    # What an unreadable index named is unknown: its index goes at once, its objects are
    # left to the grace like any unnamed ones (a young one may be an ingest running).
    key = stored[3][1].key
    left = list_keys(s3_client, settings.bucket, layout.instance_prefix(key))
    assert len(left) == 5 and layout.index(key) not in left
    time.sleep(1.1)
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--grace", "0", "--repair")
    assert code == 0 and "ORPHAN" in out
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(key)) == []


def test_a_dangling_index_is_found_and_removed(
    monkeypatch, s3_store, settings, capsys, s3_client, stored
):
    """An index whose frames and metadata are all gone (a half-done eviction)."""
    layout = KeyLayout(settings.prefix)
    index = stored[3][1]
    committed = layout.generation_prefix(index.key, index.generation)
    for key in list_keys(s3_client, settings.bucket, committed):
        s3_client.delete_object(Bucket=settings.bucket, Key=key)
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    # 3 frames, the metadata and the part10 object
    assert code == 1 and out.count(f"{STUDY}.1.3: ") == 5
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--repair")
    assert code == 0
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(index.key)) == []


def test_orphans_and_old_generations_wait_out_the_grace_then_go(
    monkeypatch, s3_store, settings, capsys, s3_client, stored
):
    layout = KeyLayout(settings.prefix)
    orphan = stored[1][1]
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.index(orphan.key))  # no index
    kept = stored[2][1]
    old = "0ff1ce" * 6  # a generation the index does not name: a replacement that died
    for number in (1, 2):
        put(s3_client, settings, layout.frame(kept.key, number, generation=old), b"x" * 10)

    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--repair")
    assert code == 0, out  # young: maybe an ingest still running
    assert out.count("PENDING") == 2 and "REPAIRED" not in out
    assert len(list_keys(s3_client, settings.bucket, layout.instance_prefix(orphan.key))) == 5

    time.sleep(1.1)  # Last-Modified has one-second resolution
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--grace", "0")
    assert code == 1
    orphans = f"ORPHAN     {STUDY}/{STUDY}.1/{STUDY}.1.1: generation {orphan.generation}"
    assert f"{orphans}: 5 objects" in out
    assert f"OLD        {STUDY}/{STUDY}.1/{STUDY}.1.2: generation {old}: 2 objects" in out
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--grace", "0", "--repair")
    assert code == 0, out
    assert list_keys(s3_client, settings.bucket, layout.instance_prefix(orphan.key)) == []
    assert list_keys(s3_client, settings.bucket, layout.generation_prefix(kept.key, old)) == []
    assert len(list_keys(s3_client, settings.bucket, layout.instance_prefix(kept.key))) == 6
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY, "--grace", "0")
    assert code == 0 and "checked 2 instances" in out


def test_repair_leaves_an_instance_alone_whose_index_changed_since_the_check(
    settings, s3_client, stored, tmp_path
):
    """verify on a live bucket: a replacement committed between check and repair wins."""
    bucket = Bucket.from_settings(settings)
    layout = KeyLayout(settings.prefix)
    index = stored[2][1]
    s3_client.delete_object(Bucket=settings.bucket, Key=layout.frame_of(index, 1))
    report = verify(bucket, layout, study=STUDY)
    assert [f.kind for f in report.findings] == ["missing-frame"]
    replacement = ingest_file(make(tmp_path / "new" / "i2.dcm", 2, seed=42).path, settings)
    repair(bucket, layout, report)
    assert [(r.action, "changed" in r.detail) for r in report.repairs] == [("skipped", True)]
    assert not report.ok
    now = InstanceIndex.from_json(get(s3_client, settings, layout.index(index.key)))
    assert now.identity == replacement.identity
    assert verify(bucket, layout, study=STUDY).findings == []


def test_usage_errors(monkeypatch, s3_store, settings, capsys):
    assert cli(monkeypatch, s3_store, settings, capsys)[0] == 2
    assert cli(monkeypatch, s3_store, settings, capsys, STUDY, "--all")[0] == 2
    assert cli(monkeypatch, s3_store, settings, capsys, "1.2.x")[0] == 2
    assert cli(monkeypatch, s3_store, settings, capsys, STUDY, "--source", "/nonexistent")[0] == 2


def test_a_corrupt_part10_object_is_found_and_one_without_is_counted(
    monkeypatch, s3_store, settings, capsys, s3_client, stored
):
    layout = KeyLayout(settings.prefix)
    part10_key = layout.part10_of(stored[1][1])
    raw = bytearray(get(s3_client, settings, part10_key))
    raw[len(raw) // 2] ^= 0xFF  # same size: only the checksum can tell
    put(s3_client, settings, part10_key, bytes(raw))
    # An index that names no part10 object: what an instance ingested before it has.
    index_key = layout.index(stored[2][1].key)
    old = InstanceIndex.from_json(get(s3_client, settings, index_key))
    old.extra.pop("part10")
    put(s3_client, settings, index_key, old.to_json())
    code, out = cli(monkeypatch, s3_store, settings, capsys, STUDY)
    assert code == 1
    assert f"{STUDY}.1.1: part10:" in out
    assert f"{STUDY}.1.2" not in out.split("checked")[0]  # not damage, only counted
    assert "1 instance without a part10 object" in out
    report = verify(Bucket.from_settings(settings), layout, study=STUDY)
    assert [(f.kind, f.instance) for f in report.findings] == [
        ("part10-invalid", stored[1][1].key)
    ]
    assert report.without_part10 == 1


def test_every_kind_of_finding_has_a_label() -> None:
    import typing

    from framecdn.cli.verify import LABELS
    from framecdn.maintenance.verify import Kind

    assert set(LABELS) == set(typing.get_args(Kind))
