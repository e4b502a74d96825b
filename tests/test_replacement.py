"""Replacing an instance: the old version is served until the new one commits.

A replacement writes a new generation beside the committed one and swaps index.json
last; a replacement killed mid-way (SIGKILL of a real ``framecdn ingest``) leaves the
old version served byte for byte; a finished one is served at once, even by an origin
that still holds the old index, and the old objects are gone; readers during the swap
get one generation per answer, never a mix. Real SeaweedFS, real uvicorn.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout, parse_object_key
from framecdn.ingest.pipeline import Ingestor, ingest_file
from framecdn.maintenance.verify import verify
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis
from tests.conftest import list_keys
from tests.origin_fixtures import run_origin
from tests.test_ingest import FailingFile, _cli

UIDS = {
    "study_uid": "1.2.826.0.1.77",
    "series_uid": "1.2.826.0.1.77.1",
    "sop_uid": "1.2.826.0.1.77.1.1",
}
KEY = InstanceKey(UIDS["study_uid"], UIDS["series_uid"], UIDS["sop_uid"])
OCTET = {"Accept": "application/octet-stream"}


def version(path: Path, seed: int, *, frames: int = 4, size: int = 32) -> GeneratedInstance:
    """One version of the instance (same UIDs, other pixels)."""
    return write_tomosynthesis(path, frames=frames, rows=size, columns=size, seed=seed, **UIDS)


def frame_url(served, number: int | str) -> str:
    return (
        f"{served.root}/studies/{KEY.study}/series/{KEY.series}/instances/{KEY.instance}"
        f"/frames/{number}"
    )


def stored_index(s3_client, settings: Settings) -> InstanceIndex:
    raw = s3_client.get_object(Bucket=settings.bucket, Key=KeyLayout(settings.prefix).index(KEY))
    return InstanceIndex.from_json(raw["Body"].read())


def generations(s3_client, settings: Settings) -> dict[str | None, int]:
    """Generation -> number of frame and metadata objects stored for it."""
    found: dict[str | None, int] = {}
    prefix = KeyLayout(settings.prefix).instance_prefix(KEY)
    for key in list_keys(s3_client, settings.bucket, prefix):
        parsed = parse_object_key(key)
        assert parsed is not None, key
        if parsed.part != "index":
            found[parsed.generation] = found.get(parsed.generation, 0) + 1
    return found


def assert_serves(http: httpx.Client, served, made: GeneratedInstance, frames: int) -> None:
    for number in range(1, frames + 1):
        response = http.get(frame_url(served, number), headers=OCTET)
        assert response.status_code == 200, response.text
        assert response.content == made.frame(number), f"frame {number} is not this version"


def test_a_replacement_killed_midway_leaves_the_old_version_served(
    s3_client, settings: Settings, tmp_path: Path
) -> None:
    old = version(tmp_path / "old.dcm", seed=1, frames=40, size=1024)
    ingest_file(old.path, settings)
    committed = stored_index(s3_client, settings)
    new = version(tmp_path / "new.dcm", seed=2, frames=40, size=1024)
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        assert_serves(http, served, old, 2)  # the origin now holds the old index
        with _cli(settings, "ingest", "--no-progress", "--workers", "2", str(new.path)) as process:
            deadline = time.monotonic() + 60
            while sum(generations(s3_client, settings).values()) < 41 + 3:
                assert time.monotonic() < deadline, "the replacement made no progress"
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
        assert stored_index(s3_client, settings) == committed  # not swapped, not deleted
        assert_serves(http, served, old, 40)
    with run_origin(settings) as fresh, httpx.Client(timeout=30) as http:
        assert_serves(http, fresh, old, 40)  # an origin that reads the index anew, too

    with _cli(settings, "ingest", "--no-progress", str(new.path)) as rerun:
        _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    swapped = stored_index(s3_client, settings)
    assert swapped.generation not in (None, committed.generation)
    stored = generations(s3_client, settings)
    assert committed.generation not in stored  # the old version's objects are gone
    assert stored[swapped.generation] == 42
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        assert_serves(http, served, new, 40)


def test_a_finished_replacement_is_served_at_once_and_the_old_objects_go(
    s3_client, settings: Settings, tmp_path: Path
) -> None:
    old = version(tmp_path / "old.dcm", seed=3)
    new = version(tmp_path / "new.dcm", seed=4)
    ingest_file(old.path, settings)
    committed = stored_index(s3_client, settings)
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        assert_serves(http, served, old, 4)
        old_metadata = http.get(f"{frame_url(served, 1).rsplit('/frames', 1)[0]}/metadata")
        assert old_metadata.status_code == 200

        index = ingest_file(new.path, settings)

        # The origin still caches the old index: the old generation is gone, so it
        # reads the index again and answers from the new one.
        assert_serves(http, served, new, 4)
        multipart = http.get(frame_url(served, "1,2,3,4"))
        assert multipart.status_code == 200
        for number in range(1, 5):
            assert new.frame(number) in multipart.content
        metadata = http.get(f"{frame_url(served, 1).rsplit('/frames', 1)[0]}/metadata")
        assert metadata.status_code == 200
    assert generations(s3_client, settings) == {index.generation: 6}
    assert committed.generation != index.generation


def test_a_replacement_that_fails_removes_only_its_own_generation(
    s3_client, settings: Settings, tmp_path: Path
) -> None:
    old = version(tmp_path / "old.dcm", seed=9, frames=6, size=64)
    committed = ingest_file(old.path, settings)
    new = version(tmp_path / "new.dcm", seed=10, frames=6, size=64)
    fail_at = new.path.stat().st_size - 2 * 64 * 64 * 2 + 10  # the read fails at frame 5
    with Ingestor(settings) as ingestor, FailingFile(new.path, fail_at) as source:
        result = ingestor.ingest(source, name="new.dcm")
    assert result.status == "failed" and "Input/output error" in result.reason
    assert stored_index(s3_client, settings) == committed
    assert generations(s3_client, settings) == {committed.generation: 8}
    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        assert_serves(http, served, old, 6)


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The complete parts' bodies of a (possibly cut) multipart answer."""
    boundary = b"--" + content_type.split("boundary=")[1].encode()
    parts = []
    for piece in body.split(boundary)[1:]:
        _head, sep, payload = piece.partition(b"\r\n\r\n")
        if not sep or not payload.endswith(b"\r\n"):
            break  # the cut part
        parts.append(payload[:-2])
    return parts


@pytest.mark.parametrize("swaps", [4])
def test_readers_during_swaps_never_get_a_mix_of_generations(
    settings: Settings, tmp_path: Path, swaps: int
) -> None:
    frames = 8
    versions = [
        version(tmp_path / f"v{seed}.dcm", seed=seed, frames=frames, size=256) for seed in (5, 6)
    ]
    expected = [[made.frame(n) for n in range(1, frames + 1)] for made in versions]
    ingest_file(versions[0].path, settings)
    stop = threading.Event()
    seen: dict[str, int] = {"v0": 0, "v1": 0, "cut": 0}
    mixed: list[str] = []

    def reader(served) -> None:
        everything = frame_url(served, ",".join(map(str, range(1, frames + 1))))
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    with http.stream("GET", everything) as response:
                        if response.status_code != 200:
                            mixed.append(f"status {response.status_code}")
                            continue
                        body = b""
                        try:
                            for chunk in response.iter_raw():
                                body += chunk
                        except httpx.RemoteProtocolError:
                            seen["cut"] += 1
                        parts = multipart_parts(body, response.headers["content-type"])
                except httpx.TransportError as exc:
                    mixed.append(f"transport {exc!r}")
                    continue
                which = {
                    v for v in (0, 1) for i, part in enumerate(parts) if part == expected[v][i]
                }
                if len(which) > 1 or any(
                    part not in (expected[0][i], expected[1][i]) for i, part in enumerate(parts)
                ):
                    mixed.append("parts of both versions in one answer")
                elif len(parts) == frames:
                    seen[f"v{which.pop()}"] += 1

    with run_origin(settings) as served:
        threads = [threading.Thread(target=reader, args=(served,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for swap in range(swaps):
                time.sleep(0.3)
                ingest_file(versions[(swap + 1) % 2].path, settings)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert mixed == []
    assert seen["v0"] > 0 and seen["v1"] > 0, seen  # both versions were read during the run
    print(json.dumps(seen))


def test_a_schema_1_instance_is_served_and_replaced_into_a_generation(
    s3_client, settings: Settings, tmp_path: Path
) -> None:
    """Instances written before generations (objects right under the instance) still work."""
    old = version(tmp_path / "old.dcm", seed=7)
    index = ingest_file(old.path, settings)
    layout = KeyLayout(settings.prefix)
    # Rewrite it as schema 1 wrote it: objects directly under the instance, index v1.
    for number in range(1, 5):
        s3_client.copy_object(
            Bucket=settings.bucket,
            CopySource={"Bucket": settings.bucket, "Key": layout.frame_of(index, number)},
            Key=layout.frame(KEY, number, generation=None),
        )
    s3_client.copy_object(
        Bucket=settings.bucket,
        CopySource={"Bucket": settings.bucket, "Key": layout.metadata_of(index)},
        Key=layout.metadata(KEY, generation=None),
    )
    v1 = json.loads(index.to_json())
    v1.update(schema=1, ingest_id=uuid.uuid4().hex[:8], extra={})  # schema 1: no part10
    s3_client.delete_objects(
        Bucket=settings.bucket,
        Delete={"Objects": [{"Key": layout.frame_of(index, n)} for n in range(1, 5)]
                + [{"Key": layout.metadata_of(index)}, {"Key": layout.part10_of(index)}]},
    )
    s3_client.put_object(
        Bucket=settings.bucket, Key=layout.index(KEY), Body=json.dumps(v1).encode()
    )
    assert generations(s3_client, settings) == {None: 5}
    checked = verify(Bucket.from_settings(settings), layout, study=KEY.study)
    assert checked.findings == [] and checked.schema_1 == 1 and checked.frames == 4

    with run_origin(settings) as served, httpx.Client(timeout=30) as http:
        assert_serves(http, served, old, 4)
        new = version(tmp_path / "new.dcm", seed=8)
        replaced = ingest_file(new.path, settings)
        assert_serves(http, served, new, 4)
    assert generations(s3_client, settings) == {replaced.generation: 6}
