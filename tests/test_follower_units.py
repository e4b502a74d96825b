"""Pure parts of the follower: shards, the settled position, filters, names, credentials."""

from __future__ import annotations

import argparse
import hashlib

import pytest

from framecdn.errors import ConfigError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.follow_cursor import FeedPosition, cursor_key, default_feed_id
from framecdn.ingest.follow_selection import Filters, Shard
from framecdn.ingest.orthanc import InstanceInfo, SeriesInfo


def test_shard_parse() -> None:
    assert Shard.parse("1/3") == Shard(1, 3)
    assert Shard.parse(" 0 / 1 ") == Shard(0, 1)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0", ""):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_shards_are_sha256_of_the_uid_mod_n_and_cover_every_uid_once() -> None:
    # Pinned: any follower, anywhere, must agree on where a UID goes.
    uid = "1.2.3"
    assert int.from_bytes(hashlib.sha256(uid.encode()).digest(), "big") % 7 == 3
    assert [k for k in range(7) if Shard(k, 7).takes(uid)] == [3]
    uids = [f"1.2.826.0.1.3680043.{n}" for n in range(2000)]
    counts = [sum(Shard(k, 4).takes(u) for u in uids) for k in range(4)]
    assert sum(counts) == len(uids)
    assert min(counts) > 400  # roughly even


def test_position_stays_below_the_oldest_unsettled_change() -> None:
    position = FeedPosition(10)
    position.add_page([12, 15, 17], last=20)
    assert position.settled_through == 11 and position.outstanding == 3
    position.close(15)
    assert position.settled_through == 11  # 12 is still in flight
    position.close(12)
    assert position.settled_through == 16
    position.open(17)  # a stable series: one entry per instance
    position.close(17)
    assert position.settled_through == 16
    position.close(17)
    assert position.settled_through == 20  # everything up to the page's end
    position.add_page([], last=25)
    assert position.settled_through == 25


def test_filters() -> None:
    def info(frames: int) -> InstanceInfo:
        return InstanceInfo("i", "1.2.3", frames, "s")

    mg = SeriesInfo("s", "1.2.4", "MG", "st")
    ct = SeriesInfo("s", "1.2.4", "CT", "st")
    asked: list[str] = []

    def sop_class() -> str:
        asked.append("asked")
        return "1.2.840.10008.5.1.4.1.1.13.1.3"

    assert Filters().refuse(info(1), ct, sop_class) is None
    assert asked == []  # no SOP class filter: Orthanc is not asked for it
    only_mg = Filters(modalities=frozenset({"MG"}), min_frames=2)
    assert only_mg.refuse(info(3), mg, sop_class) is None
    assert only_mg.refuse(info(3), ct, sop_class) == "modality CT"
    assert only_mg.refuse(info(1), mg, sop_class) == "1 frames < 2"
    by_class = Filters(sop_classes=frozenset({"1.2.840.10008.5.1.4.1.1.1.2"}))
    assert by_class.refuse(info(1), mg, sop_class) == "SOP class 1.2.840.10008.5.1.4.1.1.13.1.3"
    settings = Settings(follow_modalities=("mg", "Ct"), follow_min_frames=3)
    assert Filters.from_settings(settings).modalities == {"MG", "CT"}


def test_feed_ids_and_cursor_keys() -> None:
    assert default_feed_id("http://orthanc:8042") == "orthanc-8042"
    assert default_feed_id("https://pacs.example.org/orthanc/") == "pacs.example.org-443-orthanc"
    layout = KeyLayout("clinic-a")
    assert cursor_key(layout, "orthanc-8042", Shard(1, 4)) == (
        "clinic-a/followers/orthanc/orthanc-8042/shard-1-of-4.json"
    )
    for bad in ("a/b", "..", "", "x" * 101):
        with pytest.raises(ConfigError):
            cursor_key(layout, bad, Shard())


def test_credentials_come_from_a_file_or_the_environment(tmp_path) -> None:
    from framecdn.cli.follow_orthanc import follower_settings, orthanc_credentials

    path = tmp_path / "creds"
    path.write_text("alice:pa:ss\n")
    assert orthanc_credentials(Settings(orthanc_credentials_file=str(path))) == ("alice", "pa:ss")
    path.write_text("no-colon")
    with pytest.raises(ConfigError, match="user:password"):
        orthanc_credentials(Settings(orthanc_credentials_file=str(path)))
    assert orthanc_credentials(Settings(orthanc_username="bob", orthanc_password="pw")) == (
        "bob",
        "pw",
    )
    with pytest.raises(ConfigError):
        orthanc_credentials(Settings(orthanc_password="pw"))
    env = Settings.from_env(
        {"FRAMECDN_FOLLOW_MODALITIES": "MG, CT", "FRAMECDN_FOLLOW_SHARD": "1/2"}
    )
    assert env.follow_modalities == ("MG", "CT") and env.follow_shard == "1/2"
    args = argparse.Namespace(
        s3_endpoint=None,
        bucket=None,
        prefix=None,
        orthanc_url="http://o:8042",
        orthanc_credentials_file=None,
        follow_trigger=None,
        follow_concurrency=None,
        follow_modalities=["MG,CT", "US"],
        follow_sop_classes=None,
        follow_min_frames=None,
        follow_shard=None,
        follow_feed_id=None,
    )
    assert follower_settings(args).follow_modalities == ("MG", "CT", "US")
