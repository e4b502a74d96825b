"""A frame larger than ingest's memory budget is never held whole: it goes in parts.

``framecdn ingest`` with ``FRAMECDN_INGEST_MEMORY_MB`` set small stores a frame of six
times that budget with an S3 multipart upload (each part checked by the store's
SHA-256), byte for byte, and its peak memory grows by far less than the frame. A part
that fails aborts the upload: nothing is left, visible or not. Real SeaweedFS.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.bucket import MIN_PART_BYTES
from framecdn.framestore.config import Settings
from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest.pipeline import Ingestor
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys

MiB = 1024 * 1024
BUDGET_MB = 8
#: Runs the command given and prints its peak resident size (KiB): the child's alone.
PEAK_OF_CHILD = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def ingest_peak_rss(s3_store: EmbeddedS3, settings: Settings, path: Path) -> int:
    """Peak RSS in bytes of ``framecdn ingest PATH`` with the small memory budget."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment(prefix=settings.prefix))
    env["FRAMECDN_INGEST_MEMORY_MB"] = str(BUDGET_MB)
    command = [sys.executable, "-c", PEAK_OF_CHILD, sys.executable, "-m", "framecdn"]
    command += ["ingest", "--no-progress", str(path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1]) * 1024


def test_a_frame_six_times_the_budget_goes_in_parts_byte_exact_in_bounded_memory(
    s3_store: EmbeddedS3, s3_client, settings: Settings, tmp_path: Path
) -> None:
    small = write_tomosynthesis(tmp_path / "small.dcm", frames=1, rows=64, columns=64, seed=1)
    # One 16-bit frame of 4096 x 6144 pixels: 48 MiB, six times the 8 MiB budget.
    large = write_tomosynthesis(tmp_path / "large.dcm", frames=1, rows=4096, columns=6144, seed=2)
    baseline = ingest_peak_rss(s3_store, settings, small.path)
    peak = ingest_peak_rss(s3_store, settings, large.path)

    layout = KeyLayout(settings.prefix)
    key = InstanceKey(large.study_uid, large.series_uid, large.sop_uid)
    raw = s3_client.get_object(Bucket=settings.bucket, Key=layout.index(key))["Body"].read()
    index = InstanceIndex.from_json(raw)
    frame = large.frame(1)
    assert index.frame(1).size == len(frame) == 48 * MiB
    assert index.frame(1).sha256 == hashlib.sha256(frame).hexdigest()
    stored = s3_client.get_object(Bucket=settings.bucket, Key=layout.frame_of(index, 1))
    assert stored["Body"].read() == frame
    parts = -(-len(frame) // MIN_PART_BYTES)
    assert stored["ETag"].strip('"').endswith(f"-{parts}")  # written in parts
    assert stored["ContentType"].startswith("application/octet-stream; transfer-syntax=")
    tags = s3_client.get_object_tagging(Bucket=settings.bucket, Key=layout.frame_of(index, 1))
    assert {"Key": "framecdn-retention", "Value": "cache"} in tags["TagSet"]
    # Holding the frame whole would add at least 48 MiB; the parts in flight stay
    # within the budget (one 5 MiB part at a time here), plus the HTTP layer's copy.
    assert peak - baseline < 24 * MiB, f"peak grew by {(peak - baseline) / MiB:.1f} MiB"


@pytest.mark.parametrize("failing_part", [1, 3])
def test_a_failing_part_aborts_the_upload_and_leaves_nothing(
    s3_client, settings: Settings, tmp_path: Path, failing_part: int
) -> None:
    generated = write_tomosynthesis(tmp_path / "tomo.dcm", frames=2, rows=2048, columns=3072)
    small_budget = settings.with_overrides(ingest_memory_mb=1, ingest_workers=2)
    uploads: list[str] = []

    def fail_one_part(params, **_: object) -> None:
        uploads.append(params["UploadId"])
        if params["PartNumber"] == failing_part:
            raise OSError("the network went away during this part")

    with Ingestor(small_budget) as ingestor:
        ingestor.bucket.client.meta.events.register(
            "provide-client-params.s3.UploadPart", fail_one_part
        )
        result = ingestor.ingest(generated.path)
    assert result.status == "failed" and "went away" in result.reason
    assert list_keys(s3_client, settings.bucket, KeyLayout(settings.prefix).prefix) == []
    pending = s3_client.list_multipart_uploads(Bucket=settings.bucket).get("Uploads", [])
    assert not {u["UploadId"] for u in pending} & set(uploads)  # every upload was aborted


def test_progress_counts_every_frame_byte_once_whole_or_in_parts(
    settings: Settings, tmp_path: Path
) -> None:
    """``on_frame`` (the progress bar's feed) hears of each stored frame's bytes: a frame
    larger than the memory budget (uploaded in parts) as well as small ones."""
    large = write_tomosynthesis(tmp_path / "large.dcm", frames=2, rows=1024, columns=1024)
    small = write_tomosynthesis(tmp_path / "small.dcm", frames=3, rows=64, columns=64)
    assert len(large.frame(1)) > 1024 * 1024  # more than the budget below: in parts
    heard: list[int] = []
    with Ingestor(settings.with_overrides(ingest_memory_mb=1, ingest_workers=2)) as ingestor:
        for generated, frames in ((large, 2), (small, 3)):
            before = sum(heard)
            assert ingestor.ingest(generated.path, on_frame=heard.append).status == "ingested"
            stored = sum(len(generated.frame(n)) for n in range(1, frames + 1))
            assert sum(heard) - before == stored
