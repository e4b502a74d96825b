"""Asking the fill service (``framecdn fill``) to bring missing instances into the bucket.

The origin never ingests: it tells the fill service which instances a viewer asked for
and moves on (the request is sent in the background; the viewer's answer comes from
the upstream meanwhile). Each origin process asks for an instance at most once per
:data:`ASK_AGAIN_SECONDS` (one frame request per frame of a scroll would otherwise
ask dozens of times); the fill service itself makes one fill of an instance however
many processes ask. A failed request (service down) is forgotten, so the next miss asks
again. Without a fill service configured, nothing is asked (and the upstream keeps
answering).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp

from framecdn.framestore.config import Settings
from framecdn.framestore.fill_protocol import ACCEPTED, FillRequest, fill_url
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.origin.cache import TTLCache
from framecdn.origin.metrics import Metrics

log = logging.getLogger("framecdn.origin")

ASK_AGAIN_SECONDS = 60.0
#: Requests to the fill service in flight at once per process; more are dropped (and the
#: instances asked for again at their next miss).
MAX_PENDING_REQUESTS = 64
REQUEST_TIMEOUT = 10.0


class FillRequests:
    """Queues instances at the fill service, in the background, deduplicated per process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.url = fill_url(settings.fill_url) if settings.fill_url else None
        self.metrics = metrics
        self._asked: TTLCache[tuple[str, InstanceKey], bool] = TTLCache(
            100_000, ASK_AGAIN_SECONDS
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def ask(self, keys: Iterable[InstanceKey], layout: KeyLayout) -> int:
        """Queue ``keys`` (those not asked for lately) to be filled under ``layout``: the
        first of the request's scope, the upstream's own site. Returns how many were sent."""
        if self.url is None:
            return 0
        prefix = layout.prefix
        new = [key for key in dict.fromkeys(keys) if self._asked.get((prefix, key)) is None]
        if not new:
            return 0
        if len(self._tasks) >= MAX_PENDING_REQUESTS:
            self.metrics.fill_requests.labels("dropped").inc(len(new))
            return 0
        for key in new:
            self._asked.put((prefix, key), True)
        task = asyncio.ensure_future(self._send(new, prefix))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return len(new)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=8),
            )
        return self._session

    async def _send(self, keys: list[InstanceKey], prefix: str) -> None:
        assert self.url is not None
        body = FillRequest(tuple(keys), prefix).to_json()
        try:
            async with self._client().post(self.url, json=body) as response:
                if response.status != ACCEPTED:
                    text = (await response.read())[:200].decode(errors="replace")
                    raise RuntimeError(f"answered {response.status}: {text}")
                await response.read()
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            for key in keys:
                self._asked.drop((prefix, key))  # ask again at the next miss
            self.metrics.fill_requests.labels("failed").inc(len(keys))
            log.warning("could not queue %d fill(s) at %s: %s", len(keys), self.url, exc)
            return
        self.metrics.fill_requests.labels("queued").inc(len(keys))

    async def settle(self) -> None:
        """Wait for the requests in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.settle()
        if self._session is not None:
            await self._session.close()
