"""An in-memory stand-in for :class:`framecdn.framestore.bucket.Bucket`, for pure-logic tests.

Same methods, same errors (``ObjectMissing`` only for a missing key, ``StoreError``
for anything else), no network. ``fail`` makes chosen calls fail the way a store
that denies or times out would, to test what the code decides then. Tests of the
real behaviour against S3 use the real ``Bucket`` on SeaweedFS (tests/test_bucket.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.bucket import DeleteRefused, StoredObject
from framecdn.framestore.retention import CACHE, RETENTION_TAG


@dataclass
class FakeObject:
    body: bytes
    content_type: str
    tags: dict[str, str] = field(default_factory=dict)
    last_modified: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeBucket:
    """A dict of objects behind the Bucket interface. Thread-safe enough for pool.map."""

    def __init__(self, name: str = "fake", server: str = "FakeS3") -> None:
        self.name = name
        self.endpoint = "memory://fake"
        self.objects: dict[str, FakeObject] = {}
        self.rules: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []  # (operation, key) in order
        self._server = server
        self._lock = threading.Lock()
        #: operation name -> predicate on the key; a match raises StoreError
        self.failures: dict[str, Callable[[str], bool]] = {}

    # Test helpers ---------------------------------------------------------------
    def fail(self, operation: str, when: Callable[[str], bool] = lambda key: True) -> None:
        """Make ``operation`` ("get", "tags", "put", "delete", "list"...) fail for some keys."""
        self.failures[operation] = when

    def _enter(self, operation: str, key: str) -> None:
        with self._lock:
            self.calls.append((operation, key))
        when = self.failures.get(operation)
        if when is not None and when(key):
            raise StoreError(f"S3 at {self.endpoint} refused {operation} {key} (AccessDenied)")

    def _object(self, key: str) -> FakeObject:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectMissing(key) from None

    # The Bucket interface -------------------------------------------------------
    @staticmethod
    def is_missing(exc: BaseException) -> bool:
        return isinstance(exc, ObjectMissing)

    def check(self) -> None:
        self._enter("check", "")

    def server(self) -> str:
        self._enter("server", "")
        return self._server

    def list(self, prefix: str) -> Iterator[StoredObject]:
        self._enter("list", prefix)
        for key in sorted(self.objects):
            if key.startswith(prefix):
                obj = self.objects[key]
                yield StoredObject(key, len(obj.body), obj.last_modified)

    def get(self, key: str) -> bytes:
        self._enter("get", key)
        return self._object(key).body

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except ObjectMissing:
            return None

    def head(self, key: str) -> dict[str, Any]:
        self._enter("head", key)
        obj = self._object(key)
        return {"ContentType": obj.content_type, "ContentLength": len(obj.body)}

    def put(
        self, key: str, body: bytes, content_type: str, *, retention: str | None = CACHE
    ) -> str:
        self._enter("put", key)
        tags = {} if retention is None else {RETENTION_TAG: retention}
        with self._lock:
            self.objects[key] = FakeObject(bytes(body), content_type, tags)
        return hashlib.sha256(body).hexdigest()

    def delete(self, keys: Sequence[str], *, batch_size: int = 1000) -> int:
        refused = []
        for key in keys:
            try:
                self._enter("delete", key)
            except StoreError:
                refused.append(key)
                continue
            with self._lock:
                self.objects.pop(key, None)
        if refused:
            raise DeleteRefused(f"{len(refused)} objects were not deleted: {refused[:5]}")
        return len(keys)

    def copy_in_place(self, key: str) -> None:
        self._enter("copy", key)
        self._object(key).last_modified = datetime.now(UTC)

    def tags(self, key: str) -> dict[str, str]:
        self._enter("tags", key)
        return dict(self._object(key).tags)

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        self._enter("set_tags", key)
        self._object(key).tags = dict(tags)

    def retention(self, key: str) -> str | None:
        return self.tags(key).get(RETENTION_TAG)

    def set_retention(self, key: str, value: str) -> None:
        tags = self.tags(key)
        tags[RETENTION_TAG] = value
        self.set_tags(key, tags)

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        self._enter("lifecycle_rules", "")
        return [dict(rule) for rule in self.rules]

    def put_lifecycle_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        self._enter("put_lifecycle_rules", "")
        self.rules = [dict(rule) for rule in rules]
