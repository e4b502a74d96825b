"""Frame bodies streamed from S3 to the socket, chunk by chunk.

Memory per request is a chunk or two: the S3 response body stays in the socket
until we forward it. For a frame list, the next few frames' GETs are started while
the current one streams (their headers arrive, their bodies wait in the kernel),
so S3's time-to-first-byte overlaps the transfer; parts are written in order.

A frame that is missing or shorter than the index says cannot be finished as a
valid body: we raise, the server cuts the connection, and the client sees a short
body instead of a wrong one. A client that goes away cancels the generator, and
every open S3 response is closed (its connection goes back to the pool or away).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from framecdn.origin.multipart import MultipartLayout
from framecdn.origin.storage import ObjectStore, ObjectStream


class BrokenInstance(Exception):
    """A frame object is missing or short although the index lists it."""


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator, even when cancelled."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def single_body(
    stream: ObjectStream,
    expected: int,
    on_broken: Callable[[], None],
    chunk_size: int,
) -> AsyncIterator[bytes]:
    """One frame (or a range of it) exactly ``expected`` bytes long."""
    sent = 0
    try:
        async for chunk in stream.chunks(chunk_size):
            sent += len(chunk)
            if sent > expected:
                break
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
    if sent != expected:
        on_broken()
        raise BrokenInstance(f"frame body was {sent} bytes, index says {expected}")


async def _close_quietly(task: asyncio.Task[ObjectStream]) -> None:
    if not task.done():
        task.cancel()
    try:
        stream = await task
    except BaseException:  # cancelled, or failed to open: nothing to close
        return
    await stream.aclose()


async def multipart_body(
    store: ObjectStore,
    layout: MultipartLayout,
    keys: Sequence[str],
    first: ObjectStream,
    on_broken: Callable[[], None],
    *,
    prefetch: int,
    chunk_size: int,
) -> AsyncIterator[bytes]:
    """The multipart body: part heads from ``layout``, frames from S3, in order.

    ``first`` is frame 0's already-open stream (opened before the status line so
    that a missing instance is still a clean 404).
    """
    count = len(keys)
    pending: dict[int, asyncio.Task[ObjectStream]] = {}
    scheduled = 1

    def schedule() -> None:
        nonlocal scheduled
        while scheduled < count and len(pending) < max(prefetch - 1, 0):
            pending[scheduled] = asyncio.ensure_future(store.open(keys[scheduled]))
            scheduled += 1

    current: ObjectStream | None = first
    try:
        for index in range(count):
            if index > 0:
                if index not in pending:
                    schedule()
                task = pending.pop(index, None)
                if task is None:
                    pending[index] = asyncio.ensure_future(store.open(keys[index]))
                    task = pending.pop(index)
                try:
                    current = await task
                except Exception as exc:
                    on_broken()
                    raise BrokenInstance(f"frame object {keys[index]}: {exc!r}") from exc
            schedule()
            assert current is not None
            head = layout.part_head(index)
            expected = layout.parts[index].size
            sent = 0
            async for chunk in current.chunks(chunk_size):
                sent += len(chunk)
                if sent > expected:
                    break
                if head:
                    chunk, head = head + chunk, b""
                yield chunk
            if head:
                yield head
            with anyio.CancelScope(shield=True):
                await current.aclose()
            current = None
            if sent != expected:
                on_broken()
                raise BrokenInstance(f"{keys[index]} was {sent} bytes, index says {expected}")
        yield layout.closing
    finally:
        with anyio.CancelScope(shield=True):
            if current is not None:
                await current.aclose()
            for task in pending.values():
                await _close_quietly(task)
