"""The write side's Bucket against the real SeaweedFS: every fault gives its own one-line error.

Only the store's "no such key" is ObjectMissing; a missing bucket, a wrong secret, a
closed port or missing credentials are StoreErrors that say what to check.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.config import Settings
from framecdn.framestore.retention import CACHE, PINNED, RETENTION_TAG
from tests.origin_fixtures import free_port


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """An environment where boto3 finds no credentials anywhere (and does not ask EC2)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_a_missing_key_is_object_missing_and_nothing_else(bucket, settings):
    key = f"{settings.prefix}/nothing-here"
    for call in (bucket.get, bucket.head, bucket.tags, bucket.retention):
        with pytest.raises(ObjectMissing) as caught:
            call(key)
        assert caught.value.key == key and bucket.is_missing(caught.value)
    assert bucket.get_or_none(key) is None


def test_a_missing_bucket_is_a_store_error_naming_it(settings):
    gone = Bucket.from_settings(settings.with_overrides(bucket=f"gone-{uuid.uuid4().hex[:8]}"))
    calls = {
        "check": gone.check,
        "list": lambda: list(gone.list("")),
        "get": lambda: gone.get("some/key"),
        "get_or_none": lambda: gone.get_or_none("some/key"),
        "head": lambda: gone.head("some/key"),
        "tags": lambda: gone.tags("some/key"),
        "lifecycle_rules": gone.lifecycle_rules,
    }  # (SeaweedFS creates a missing bucket on PUT: the CLI checks the bucket first)
    for name, call in calls.items():
        with pytest.raises(StoreError) as caught:
            call()
        assert not isinstance(caught.value, ObjectMissing), name
        assert f"bucket {gone.name!r} does not exist at {settings.s3_endpoint}" in one_line(
            caught.value
        ), name


def test_a_wrong_secret_is_a_store_error_naming_the_variables(settings):
    forged = Bucket.from_settings(settings.with_overrides(aws_secret_access_key="guess"))
    for call in (forged.check, lambda: list(forged.list("")), lambda: forged.get("no/such/key")):
        with pytest.raises(StoreError) as caught:
            call()
        assert not isinstance(caught.value, ObjectMissing)  # a denied read is never "missing"
        text = one_line(caught.value)
        assert "refused" in text and "AWS_SECRET_ACCESS_KEY" in text


def test_a_closed_port_is_a_store_error_naming_the_endpoint(settings):
    endpoint = f"http://127.0.0.1:{free_port()}"
    closed = Bucket.from_settings(settings.with_overrides(s3_endpoint=endpoint))
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        closed.get("any/key")
    assert not isinstance(caught.value, ObjectMissing)
    assert f"cannot reach S3 at {endpoint}" in one_line(caught.value)
    assert time.monotonic() - started < 30


def test_missing_credentials_are_a_store_error_naming_the_variables(settings, no_credentials):
    anonymous = Bucket.from_settings(
        Settings(s3_endpoint=settings.s3_endpoint, bucket="some-bucket")
    )
    with pytest.raises(StoreError) as caught:
        anonymous.check()
    text = one_line(caught.value)
    assert "no S3 credentials" in text and "AWS_ACCESS_KEY_ID" in text


def test_put_is_checked_tagged_and_read_back(bucket, settings, s3_client):
    key = f"{settings.prefix}/obj"
    digest = bucket.put(key, b"frame bytes", "application/octet-stream")
    assert digest == hashlib.sha256(b"frame bytes").hexdigest()
    assert bucket.get(key) == b"frame bytes"
    assert bucket.head(key)["ContentType"] == "application/octet-stream"
    assert bucket.retention(key) == CACHE
    bucket.put(f"{key}-untagged", b"x", "text/plain", retention=None)
    assert bucket.tags(f"{key}-untagged") == {}


def test_set_retention_keeps_other_tags(bucket, settings):
    key = f"{settings.prefix}/tagged"
    bucket.put(key, b"x", "text/plain")
    bucket.set_tags(key, {RETENTION_TAG: CACHE, "site": "a"})
    bucket.set_retention(key, PINNED)
    assert bucket.tags(key) == {RETENTION_TAG: PINNED, "site": "a"}
    with pytest.raises(ObjectMissing):
        bucket.set_retention(f"{key}-gone", PINNED)


def test_delete_batches_and_ignores_missing_keys(bucket, settings):
    keys = [f"{settings.prefix}/batch/{n}" for n in range(7)]
    for key in keys:
        bucket.put(key, b"x", "text/plain")
    assert bucket.delete([*keys, f"{settings.prefix}/batch/never"], batch_size=3) == 8
    assert list(bucket.list(f"{settings.prefix}/batch/")) == []


def test_list_pages_past_a_thousand_keys_in_order(bucket, settings):
    prefix = f"{settings.prefix}/many/"
    keys = [f"{prefix}{n:05d}" for n in range(1003)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: bucket.put(key, b"", "text/plain", retention=None), keys))
    assert [obj.key for obj in bucket.list(prefix)] == keys
    bucket.delete(keys)


def test_copy_in_place_is_a_new_write_with_the_same_bytes_type_and_tags(bucket, settings):
    key = f"{settings.prefix}/copy"
    bucket.put(key, b"abc", "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90")
    bucket.set_retention(key, CACHE)
    before = bucket.head(key)["LastModified"]
    time.sleep(1.1)  # Last-Modified has one-second resolution
    bucket.copy_in_place(key)
    after = bucket.head(key)
    assert after["LastModified"] > before and bucket.get(key) == b"abc"
    assert after["ContentType"].startswith("image/jp2")
    assert bucket.retention(key) == CACHE


def test_no_lifecycle_configuration_reads_as_no_rules(s3_store, own_bucket):
    assert Bucket.from_settings(own_bucket).lifecycle_rules() == []


def test_is_missing_reads_only_no_such_key():
    def error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")

    assert Bucket.is_missing(error("NoSuchKey")) and Bucket.is_missing(ObjectMissing("k"))
    for code in ("AccessDenied", "NoSuchBucket", "InternalError", "SlowDown"):
        assert not Bucket.is_missing(error(code)), code
    assert not Bucket.is_missing(TimeoutError())
