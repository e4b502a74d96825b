"""The write side's one view of the bucket: list, get, put (whole or in parts), batched delete,
tags, rules.

Ingest, maintenance and the followers go through :class:`Bucket` instead of calling
boto3 directly, so that

* "object missing" is decided in one place (:class:`~framecdn.errors.ObjectMissing`
  only for a real "no such key"; a denied or failing read is a
  :class:`~framecdn.errors.StoreError`, never taken for missing);
* every S3 failure reaches the user as one line naming what to check (the bucket,
  the endpoint, the credential variables), not a botocore traceback;
* unit tests can hand a fake with the same methods to the code under test.

The origin reads through its own async client (``framecdn.origin.storage``); both
share the key layout and the error root.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.config import StorageSettings, redact_userinfo
from framecdn.framestore.retention import CACHE, RETENTION_TAG, tagging

T = TypeVar("T")

#: DeleteObjects takes at most this many keys per call.
DELETE_BATCH = 1000
#: S3's multipart limits: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}
)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One listed object: its key, size in bytes and last write time."""

    key: str
    size: int
    last_modified: datetime


class DeleteRefused(StoreError):
    """The store refused to delete some of the keys it was asked to delete."""


class MultipartUpload:
    """One object written in parts (S3 multipart upload), each with a SHA-256 the store checks.

    Parts may be uploaded from several threads at once; :meth:`complete` joins them in
    part-number order, :meth:`abort` throws them away (the caller aborts on any failure,
    so no half upload is left behind to cost storage; a lifecycle rule also aborts
    incomplete uploads after a day, see ``maintenance.lifecycle``).
    """

    def __init__(self, bucket: Bucket, key: str, upload_id: str) -> None:
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self._parts: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def upload_part(self, number: int, body: bytes) -> str:
        """Upload part ``number`` (1-based); returns its SHA-256 (hex)."""
        digest = hashlib.sha256(body).digest()
        checksum = base64.b64encode(digest).decode()
        answer = self.bucket.call(
            f"PUT part {number} of {self.key}",
            lambda: self.bucket.client.upload_part(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            ),
        )
        with self._lock:
            self._parts[number] = {
                "PartNumber": number,
                "ETag": answer["ETag"],
                "ChecksumSHA256": checksum,
            }
        return digest.hex()

    def complete(self) -> None:
        """Join the parts into the object (it appears only now)."""
        with self._lock:
            parts = [self._parts[number] for number in sorted(self._parts)]
        self.bucket.call(
            f"complete multipart upload of {self.key}",
            lambda: self.bucket.client.complete_multipart_upload(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            ),
        )

    def abort(self) -> None:
        """Throw the uploaded parts away (a missing upload is not an error)."""
        with contextlib.suppress(ObjectMissing):
            self.bucket.call(
                f"abort multipart upload of {self.key}",
                lambda: self.bucket.client.abort_multipart_upload(
                    Bucket=self.bucket.name, Key=self.key, UploadId=self.upload_id
                ),
                self.key,
            )


class Bucket:
    """One bucket on one S3 endpoint, for synchronous (threaded) code. Thread-safe."""

    def __init__(self, client: Any, name: str, *, endpoint: str | None = None) -> None:
        self.client = client
        self.name = name
        shown = endpoint or getattr(getattr(client, "meta", None), "endpoint_url", "S3")
        self.endpoint = redact_userinfo(str(shown))  # it is in every error line

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, max_connections: int | None = None
    ) -> Bucket:
        from framecdn.framestore.s3 import make_client

        client = make_client(settings, max_connections=max_connections)
        return cls(client, settings.bucket, endpoint=settings.s3_endpoint or "AWS S3")

    def __repr__(self) -> str:
        return f"Bucket({self.name!r} at {self.endpoint})"

    # Errors ------------------------------------------------------------------
    @staticmethod
    def is_missing(exc: BaseException) -> bool:
        """True only for the store's own "no such key" answer."""
        if isinstance(exc, ObjectMissing):
            return True
        if isinstance(exc, ClientError):
            return exc.response.get("Error", {}).get("Code") in _MISSING_CODES
        return False

    def _error(self, exc: Exception, what: str, key: str | None = None) -> StoreError:
        """The one-line error a person sees for an S3 failure."""
        if key is not None and self.is_missing(exc):
            return ObjectMissing(key)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            message = " ".join(str(error.get("Message", "")).split())
            if code == "NoSuchBucket" or (key is None and code in _MISSING_CODES):
                return StoreError(f"bucket {self.name!r} does not exist at {self.endpoint}")
            if code in _CREDENTIAL_CODES:
                return StoreError(
                    f"S3 at {self.endpoint} refused {what} ({code}): check AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY, and that they may use bucket "
                    f"{self.name!r}"
                )
            detail = f"{code}: {message}" if message else code
            return StoreError(f"S3 at {self.endpoint} failed {what}: {detail}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(
                f"no S3 credentials for {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return StoreError(f"cannot reach S3 at {self.endpoint} ({what})")
        if isinstance(exc, ReadTimeoutError):
            return StoreError(f"S3 at {self.endpoint} did not answer in time ({what})")
        return StoreError(f"S3 at {self.endpoint} failed {what}: {' '.join(str(exc).split())}")

    def call(self, what: str, action: Callable[[], T], key: str | None = None) -> T:
        """Run one S3 call; its failure becomes framecdn's error naming ``what``."""
        try:
            return action()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, what, key) from exc

    # Bucket ------------------------------------------------------------------
    def check(self) -> None:
        """Raise a one-line StoreError unless the bucket exists and the credentials work."""
        self.call(f"HEAD bucket {self.name}", lambda: self.client.head_bucket(Bucket=self.name))

    def server(self) -> str:
        """The store's ``Server`` header (``AmazonS3``, ``MinIO``, ``SeaweedFS ...``)."""
        answer = self.call("HEAD bucket", lambda: self.client.head_bucket(Bucket=self.name))
        return str(answer["ResponseMetadata"]["HTTPHeaders"].get("server", ""))

    # Objects -------------------------------------------------------------------
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under ``prefix``, in key order (ListObjectsV2, paginated)."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.name, Prefix=prefix)
        iterator = iter(pages)
        while True:
            page = self.call(f"LIST {prefix or '(all)'}", lambda: next(iterator, None))
            if page is None:
                return
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"], int(obj["Size"]), obj["LastModified"])

    def get(self, key: str) -> bytes:
        """The whole (small) object; ObjectMissing if there is no such key."""

        def read() -> bytes:
            body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
            return body

        return self.call(f"GET {key}", read, key)

    def chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes, read in chunks (a large frame is never whole in memory);
        ObjectMissing if there is no such key, StoreError if reading fails midway."""
        what = f"GET {key}"
        body = self.call(
            what, lambda: self.client.get_object(Bucket=self.name, Key=key)["Body"], key
        )
        try:
            pieces = body.iter_chunks(chunk_size)
            while True:
                chunk = self.call(what, lambda: next(pieces, None), key)
                if chunk is None:
                    return
                yield chunk
        finally:
            body.close()

    def get_or_none(self, key: str) -> bytes | None:
        """The object, or None when (and only when) the store says there is no such key."""
        try:
            return self.get(key)
        except ObjectMissing:
            return None

    def head(self, key: str) -> dict[str, Any]:
        """HeadObject's answer; ObjectMissing if there is no such key.

        A HEAD answer has no body, so a missing bucket also reads as a bare 404: that
        case is told apart by asking for the bucket before answering "missing".
        """
        try:
            return self.call(
                f"HEAD {key}", lambda: self.client.head_object(Bucket=self.name, Key=key), key
            )
        except ObjectMissing:
            self.check()
            raise

    def put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        *,
        retention: str | None = CACHE,
    ) -> str:
        """Write an object with a SHA-256 the store verifies; returns the digest (hex).

        ``retention`` sets framecdn's retention tag (``cache`` by default, so the
        lifecycle rule may expire it); ``None`` writes no tag (bookkeeping objects
        such as cursors, which must never expire with the frames).
        """
        digest = hashlib.sha256(body).digest()
        arguments: dict[str, Any] = {
            "Bucket": self.name,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "ChecksumSHA256": base64.b64encode(digest).decode(),
        }
        if retention is not None:
            arguments["Tagging"] = tagging(retention)
        self.call(f"PUT {key}", lambda: self.client.put_object(**arguments))
        return digest.hex()

    def start_multipart(
        self, key: str, content_type: str, *, retention: str | None = CACHE
    ) -> MultipartUpload:
        """Begin writing ``key`` in parts (for objects too large to hold in memory).

        The object gets the same Content-Type and retention tag as :meth:`put` gives it.
        """
        arguments: dict[str, Any] = {
            "Bucket": self.name,
            "Key": key,
            "ContentType": content_type,
            "ChecksumAlgorithm": "SHA256",
        }
        if retention is not None:
            arguments["Tagging"] = tagging(retention)
        answer = self.call(
            f"start multipart upload of {key}",
            lambda: self.client.create_multipart_upload(**arguments),
        )
        return MultipartUpload(self, key, answer["UploadId"])

    def delete(self, keys: Sequence[str], *, batch_size: int = DELETE_BATCH) -> int:
        """Delete ``keys`` in batches (a missing key is not an error); raise if any is refused."""
        refused: builtins.list[str] = []
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            request = {"Objects": [{"Key": key} for key in batch], "Quiet": True}
            answer = self.call(
                f"batched DELETE ({len(batch)} of {len(keys)} keys)",
                lambda request=request: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.name, Delete=request
                ),
            )
            refused += [f"{e.get('Key')}: {e.get('Code')}" for e in answer.get("Errors", [])]
        if refused:
            raise DeleteRefused(
                f"{len(refused)} of {len(keys)} objects were not deleted: "
                + "; ".join(refused[:5])
            )
        return len(keys)

    def copy_in_place(self, key: str) -> None:
        """Copy an object onto itself: a new write (new Last-Modified), same bytes and tags.

        Content-Type, Cache-Control and user metadata are kept (REPLACE with the same
        values, since S3 refuses a self-copy that changes nothing).
        """
        head = self.head(key)
        extra = {"CacheControl": head["CacheControl"]} if head.get("CacheControl") else {}
        self.call(
            f"COPY {key} onto itself",
            lambda: self.client.copy_object(
                Bucket=self.name,
                Key=key,
                CopySource={"Bucket": self.name, "Key": key},
                MetadataDirective="REPLACE",
                TaggingDirective="COPY",
                ContentType=head.get("ContentType", "application/octet-stream"),
                Metadata=head.get("Metadata", {}),
                **extra,
            ),
            key,
        )

    # Tags ----------------------------------------------------------------------
    def tags(self, key: str) -> dict[str, str]:
        """The object's tags; ObjectMissing if there is no such key."""
        answer = self.call(
            f"GET tags of {key}",
            lambda: self.client.get_object_tagging(Bucket=self.name, Key=key),
            key,
        )
        return {tag["Key"]: tag["Value"] for tag in answer.get("TagSet", [])}

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        tag_set = [{"Key": name, "Value": value} for name, value in tags.items()]
        self.call(
            f"PUT tags of {key}",
            lambda: self.client.put_object_tagging(
                Bucket=self.name, Key=key, Tagging={"TagSet": tag_set}
            ),
            key,
        )

    def retention(self, key: str) -> str | None:
        """The value of framecdn's retention tag (None if the object has none)."""
        return self.tags(key).get(RETENTION_TAG)

    def set_retention(self, key: str, value: str) -> None:
        """Set framecdn's retention tag, keeping the object's other tags."""
        tags = self.tags(key)
        tags[RETENTION_TAG] = value
        self.set_tags(key, tags)

    # Lifecycle configuration ----------------------------------------------------
    def lifecycle_rules(self) -> builtins.list[dict[str, Any]]:
        """The bucket's lifecycle rules ([] when it has none).

        Some stores (SeaweedFS) answer "no configuration" for a bucket that does not
        exist either; the bucket is checked before "none" is believed.
        """
        try:
            answer = self.client.get_bucket_lifecycle_configuration(Bucket=self.name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                self.check()
                return []
            raise self._error(exc, "GET lifecycle rules") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "GET lifecycle rules") from exc
        return list(answer.get("Rules", []))

    def put_lifecycle_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        """Replace the bucket's rules (none: remove the configuration)."""
        if rules:
            self.call(
                "PUT lifecycle rules",
                lambda: self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.name, LifecycleConfiguration={"Rules": list(rules)}
                ),
            )
        else:
            self.call(
                "DELETE lifecycle rules",
                lambda: self.client.delete_bucket_lifecycle(Bucket=self.name),
            )
