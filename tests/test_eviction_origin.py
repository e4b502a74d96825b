"""The origin under eviction: after a real lifecycle pass it answers 404, never half an instance."""

from __future__ import annotations

from datetime import date

from starlette.testclient import TestClient

from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.pipeline import ingest_file
from framecdn.maintenance import lifecycle
from framecdn.maintenance.pinning import pin
from framecdn.maintenance.sweeper import sweep
from framecdn.origin.app import create_app
from framecdn.synthetic import write_tomosynthesis
from tests.conftest import list_keys

MULTIPART = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SINGLE = "application/octet-stream; transfer-syntax=*"


def ingest(tmp_path, settings, name: str):
    generated = write_tomosynthesis(tmp_path / f"{name}.dcm", frames=3, rows=32, columns=32)
    return ingest_file(generated.path, settings)


def frames_url(index, frames: str) -> str:
    return (
        f"/dicom-web/studies/{index.study_instance_uid}/series/{index.series_instance_uid}"
        f"/instances/{index.sop_instance_uid}/frames/{frames}"
    )


def complete_200(client: TestClient, url: str, accept: str) -> bool:
    """True only for a 200 whose body is as long as it says (a whole answer)."""
    response = client.get(url, headers={"Accept": accept})
    declared = response.headers.get("content-length")
    return response.status_code == 200 and (
        declared is None or int(declared) == len(response.content)
    )


def test_origin_answers_404_after_a_real_lifecycle_pass(s3_store, s3_client, own_bucket, tmp_path):
    bucket, layout = own_bucket.bucket, KeyLayout(own_bucket.prefix)
    evicted = ingest(tmp_path, own_bucket, "evicted")
    kept = ingest(tmp_path, own_bucket, "kept")
    pin(Bucket(s3_client, bucket), layout, kept.study_instance_uid)

    with TestClient(create_app(own_bucket), raise_server_exceptions=False) as client:
        # Warm the origin: it now holds the index of the instance about to expire.
        assert complete_200(client, frames_url(evicted, "1,2,3"), MULTIPART)
        assert complete_200(client, frames_url(kept, "1"), SINGLE)

        past = lifecycle.Policy(days=None, date=date(2020, 1, 1))
        lifecycle.apply(Bucket(s3_client, bucket), layout, past)
        s3_store.run_lifecycle_pass()
        assert list_keys(s3_client, bucket, layout.instance_prefix(evicted.key)) == []

        for attempt in range(2):  # first with the cached index, then without it
            response = client.get(frames_url(evicted, "1,2,3"), headers={"Accept": MULTIPART})
            assert response.status_code == 404, attempt
        assert client.get(frames_url(evicted, "2"), headers={"Accept": SINGLE}).status_code == 404
        assert complete_200(client, frames_url(kept, "1,2,3"), MULTIPART)


def test_origin_never_serves_a_half_evicted_instance(s3_client, own_bucket, tmp_path):
    bucket, layout = own_bucket.bucket, KeyLayout(own_bucket.prefix)
    index = ingest(tmp_path, own_bucket, "half")

    with TestClient(create_app(own_bucket), raise_server_exceptions=False) as client:
        assert complete_200(client, frames_url(index, "1,2,3"), MULTIPART)

        # Objects of one instance expire at slightly different times: frame 2 goes first.
        s3_client.delete_object(Bucket=bucket, Key=layout.frame_of(index, 2))
        assert client.get(frames_url(index, "2"), headers={"Accept": SINGLE}).status_code == 404
        for frames in ("1,2,3", "2,3", "1,2"):
            assert not complete_200(client, frames_url(index, frames), MULTIPART), frames

        # The sweeper removes the stale index (first) and the rest; then nothing is served.
        report = sweep(Bucket(s3_client, bucket), layout)
        assert report.repaired == [index.key]
        assert list_keys(s3_client, bucket, layout.instance_prefix(index.key)) == []
        for frames in ("1", "3"):
            response = client.get(frames_url(index, frames), headers={"Accept": SINGLE})
            assert response.status_code == 404, frames
        response = client.get(frames_url(index, "1,3"), headers={"Accept": MULTIPART})
        assert response.status_code == 404
