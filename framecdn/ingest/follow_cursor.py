"""Where a follower is in Orthanc's change feed, and where it keeps that in the bucket.

The cursor object (one per feed and shard) lets any replica resume; the position
moves only past changes whose instances are settled, whatever order they finish in.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from framecdn.errors import StoreError
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import KeyLayout
from framecdn.ingest.follow_selection import Shard


def default_feed_id(url: str) -> str:
    """A readable cursor name from Orthanc's URL: ``http://orthanc:8042`` -> ``orthanc-8042``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    raw = f"{parts.hostname or 'orthanc'}-{port}{parts.path}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")[:100] or "orthanc"


def cursor_key(layout: KeyLayout, feed_id: str, shard: Shard) -> str:
    """``{prefix}followers/orthanc/{feed}/shard-K-of-N.json``: one cursor per feed and shard."""
    return layout.follower_cursor(feed_id, shard.index, shard.count)


class FeedCursor:
    """The follower's position (a change Seq) in one small bucket object.

    It carries no retention tag, so lifecycle rules that expire cached frames never
    expire it.
    """

    def __init__(self, bucket: Bucket, key: str, *, describe: dict[str, str]) -> None:
        self.bucket = bucket
        self.key = key
        self._describe = describe

    def load(self) -> int | None:
        raw = self.bucket.get_or_none(self.key)
        if raw is None:
            return None
        try:
            return int(json.loads(raw)["seq"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"cursor {self.key} is unreadable ({exc}); delete it to follow from the start"
            ) from None

    def save(self, seq: int) -> None:
        body = {
            "seq": seq,
            **self._describe,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "saved_by": socket.gethostname(),
        }
        self.bucket.put(
            self.key, json.dumps(body, indent=1).encode(), "application/json", retention=None
        )


class FeedPosition:
    """Where the cursor may go: just below the oldest change not yet settled.

    Changes are opened when fetched (a stable series opens one entry per instance it
    lists) and closed when settled; completions may come in any order.
    """

    def __init__(self, start: int) -> None:
        self._fetched = start
        self._open: Counter[int] = Counter()
        self._changed = threading.Condition()

    @property
    def fetched(self) -> int:
        with self._changed:
            return self._fetched

    @property
    def settled_through(self) -> int:
        """Every change with a Seq up to this one is settled."""
        with self._changed:
            return min(self._open) - 1 if self._open else self._fetched

    @property
    def outstanding(self) -> int:
        with self._changed:
            return sum(self._open.values())

    def add_page(self, opened: Iterable[int], last: int) -> None:
        """Open the wanted changes of a page and move past the whole page, atomically."""
        with self._changed:
            for seq in opened:
                self._open[seq] += 1
            self._fetched = max(self._fetched, last)

    def open(self, seq: int) -> None:
        with self._changed:
            self._open[seq] += 1

    def close(self, seq: int) -> None:
        with self._changed:
            self._open[seq] -= 1
            if self._open[seq] <= 0:
                del self._open[seq]
            self._changed.notify_all()

    def restart(self, start: int) -> None:
        with self._changed:
            self._fetched = start

    def wait(self, timeout: float) -> None:
        """Until a change is settled, :meth:`wake` is called, or ``timeout`` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
