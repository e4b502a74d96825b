"""Frame bodies streamed from S3 to the socket, chunk by chunk.

Memory per request is a chunk or two: the S3 response body stays in the socket
until we forward it. For a frame list, the next few frames' GETs are started while
the current one streams (their headers arrive, their bodies wait in the kernel),
so S3's time-to-first-byte overlaps the transfer; parts are written in order.

A body that cannot be finished as the index describes it is never ended as if it
were complete: we raise, the server cuts the connection, and the client sees a short
body (a Content-Length it did not get) instead of a wrong one. Why it could not be
finished decides what happens to the instance:

* the store said so: the frame object is missing ("no such key"), or the store sent
  all of it (the body ended cleanly, or its Content-Length said so) and its size is
  not the index's. The instance is inconsistent, so ``on_broken`` condemns the
  index (``InstanceIndexes.mark_stale``): :class:`BrokenInstance`;
* the store did not answer, or the connection broke mid-body (a stall, a restart, a
  network cut; :class:`~framecdn.origin.storage.S3Error`): nothing is known to be
  wrong with the instance, and nothing is condemned. The next request reads it again.

A client that goes away cancels the generator, and every open S3 response is
closed (its connection goes back to the pool or away).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from framecdn.errors import FramecdnError
from framecdn.origin.errors import request_id
from framecdn.origin.multipart import MultipartLayout
from framecdn.origin.storage import ObjectMissing, ObjectStore, ObjectStream, S3Error

log = logging.getLogger("framecdn.origin")


class BrokenInstance(FramecdnError):
    """The store says a frame object is missing, or not the size the index lists."""


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator, even when cancelled.

    A body that breaks off (S3Error, BrokenInstance) after the status line is out ends
    the only honest way left: the app returns without the final body message, so the
    server closes the connection and the client sees a short body. One log line says
    why (with the request id); no traceback.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (S3Error, BrokenInstance) as exc:
            log.warning("request %s: answer cut short: %s", request_id(scope), exc)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def sized_as_indexed(stream: ObjectStream, expected: int) -> bool:
    """False when the store announces a body of another size than the index's."""
    return stream.content_length in (-1, expected)


async def _exactly(
    stream: ObjectStream,
    expected: int,
    what: str,
    on_broken: Callable[[], None],
    chunk_size: int,
) -> AsyncIterator[bytes]:
    """The body of ``stream``, which must be ``expected`` bytes; see the module docstring.

    An S3Error while reading (the store stalled or the connection broke) goes up as
    it is; a body the store ended at another size than the index's condemns it.
    """
    if not sized_as_indexed(stream, expected):
        on_broken()
        raise BrokenInstance(f"{what} is {stream.content_length} bytes, index says {expected}")
    sent = 0
    async for chunk in stream.chunks(chunk_size):
        sent += len(chunk)
        if sent > expected:
            break
        yield chunk
    if sent != expected:
        on_broken()
        raise BrokenInstance(f"{what} ended after {sent} bytes, index says {expected}")


async def single_body(
    stream: ObjectStream,
    expected: int,
    on_broken: Callable[[], None],
    chunk_size: int,
) -> AsyncIterator[bytes]:
    """One frame (or a range of it) exactly ``expected`` bytes long."""
    try:
        async for chunk in _exactly(stream, expected, "frame body", on_broken, chunk_size):
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _close_quietly(task: asyncio.Task[ObjectStream]) -> None:
    if not task.done():
        task.cancel()
    try:
        stream = await task
    except BaseException:  # noqa: BLE001 — cancelled, or failed to open: nothing to close
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
                except ObjectMissing as exc:
                    on_broken()
                    raise BrokenInstance(f"frame object {keys[index]} is missing") from exc
                # Any other failure (S3Error: a stall, a dead store) cuts the answer only.
            schedule()
            assert current is not None
            head = layout.part_head(index)
            expected = layout.parts[index].size
            body = _exactly(current, expected, keys[index], on_broken, chunk_size)
            async for chunk in body:
                if head:
                    chunk, head = head + chunk, b""
                yield chunk
            if head:
                yield head
            with anyio.CancelScope(shield=True):
                await current.aclose()
            current = None
        yield layout.closing
    finally:
        with anyio.CancelScope(shield=True):
            if current is not None:
                await current.aclose()
            for task in pending.values():
                await _close_quietly(task)
