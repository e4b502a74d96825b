"""Rendered frames and thumbnails (PS3.18 §10.4): JPEG or PNG images made from stored frames.

Routes (under the DICOMweb root)::

    .../instances/{I}/frames/{n}/rendered   frame n
    .../instances/{I}/rendered              a single-frame instance (406 for multi-frame)
    .../instances/{I}/thumbnail             the instance's middle frame, small
    .../instances/{I}/frames/{n}/thumbnail  frame n, small
    .../series/{Se}/thumbnail               the series' first image instance (InstanceNumber)
    /studies/{S}/thumbnail                  the study's first series' (SeriesNumber)

A multi-frame instance rendered as a whole would need a multi-frame media type (GIF,
video), which framecdn does not make: that (and a list of several frames) is 406 with a
pointer to ``.../frames/{n}/rendered``. Parameters: :mod:`framecdn.origin.rendition`;
the image work: :mod:`framecdn.origin.renderer`.

Each rendition is computed once: it is written to the bucket next to its frames
(:meth:`KeyLayout.rendition`, named by its normalised parameters and a digest of the
frame, the metadata and the renderer), read from there by every later request and every
other origin, and kept briefly in memory. The digest is also the ETag, so a revalidation
costs nothing. Rendering runs in worker processes: a JPEG 2000 decode holds the GIL for
about a second per 9 MB frame, which in a thread stalls the event loop for as long
(measured: /healthz-style ticks late by 1.0-1.6 s with threads, under 30 ms with processes).
At most ``render_workers`` frames are being fetched or rendered at once (so at most that
many whole frames are in memory), ``render_queue`` more may wait, and beyond that the
answer is 503. Lookups honour the request's read scope exactly like frames do (an
instance the bucket lacks is asked of the upstream PACS, when there is one, and queued for
a fill), and answers carry the frames' Cache-Control (made private by access control when
it is on).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import multiprocessing
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from framecdn.errors import FramecdnError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey, InvalidUID, validate_uid
from framecdn.framestore.retention import tagging
from framecdn.origin.cache import TTLCache
from framecdn.origin.errors import error_response, s3_error_response, server_error_response
from framecdn.origin.framelist import InvalidFrameList, check_in_range, parse_frame_list
from framecdn.origin.frames import SERVED, FrameVanished, answer_located, etag_matches
from framecdn.origin.instances import Found
from framecdn.origin.markers import record_read, served_from
from framecdn.origin.metrics import label
from framecdn.origin.rendition import (
    CannotRender,
    InvalidRendition,
    RenderJob,
    Rendition,
    UnacceptableRendition,
    Viewport,
    parse_rendition,
)
from framecdn.origin.scope import read_scope
from framecdn.origin.storage import ObjectMissing, S3Error

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

log = logging.getLogger("framecdn.origin")

#: Thumbnails are small: a viewport beyond this is refused (400).
THUMBNAIL_MAX_SIDE = 1024
#: What rendering imports; without them the answer is 501 naming the extra to install.
_RENDER_MODULES = ("numpy", "PIL", "pylibjpeg")
MISSING_EXTRA = "rendering needs the render extra: pip install 'framecdn[render]'"
MEMORY_SECONDS = 600.0


class RenderBusy(FramecdnError):
    """Every worker is busy and the queue is full (503)."""


class NotThere(FrameVanished):
    """A frame or the metadata turned out missing: the instance is being evicted (404)."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules as None (blocked)
        return False


def _render_in_worker(job: RenderJob) -> bytes:
    """Runs in a worker process; imports the imaging libraries there, not in the origin."""
    from framecdn.origin.renderer import render

    return render(job)


def _ignore_interrupts() -> None:
    """A worker leaves Ctrl-C to its parent, which stops it: a terminal's Ctrl-C reaches
    the whole process group, and a worker that took it would print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RenderPool:
    """Worker processes (spawned on first use) and the slots that bound work and memory."""

    def __init__(self, settings: Settings) -> None:
        self.workers = settings.render_workers
        self.queue_limit = settings.render_queue
        self.slots = asyncio.Semaphore(self.workers)
        self.waiting = 0
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._available: bool | None = None

    @property
    def available(self) -> bool:
        if self._available is None:
            self._available = all(_importable(module) for module in _RENDER_MODULES)
        return self._available

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # spawn: a fork of a process with an event loop and threads is not safe.
            context = multiprocessing.get_context("spawn")
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, context, initializer=_ignore_interrupts
            )
        return self._executor

    async def render(self, prepare: Callable[[], Awaitable[RenderJob]]) -> bytes:
        """Wait for a slot, ``prepare`` the job in it (reads the frame), render it.

        The slot stays taken until the worker is done, even if the request is cancelled
        (its client left), so the workers never hold more than their number of jobs.
        """
        if not self.available:
            raise CannotRender(501, MISSING_EXTRA)
        if self.slots.locked() and self.waiting >= self.queue_limit:
            raise RenderBusy()
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        release = True
        try:
            job = await prepare()
            loop = asyncio.get_running_loop()
            try:
                future = loop.run_in_executor(self.executor(), _render_in_worker, job)
            except concurrent.futures.BrokenExecutor:
                self._replace_broken()
                raise
            release = False
            future.add_done_callback(lambda _: self.slots.release())
            try:
                return await asyncio.shield(future)
            except concurrent.futures.BrokenExecutor:
                self._replace_broken()
                raise
        finally:
            if release:
                self.slots.release()

    def _replace_broken(self) -> None:
        """A worker died (killed, out of memory): the next rendering gets a new pool."""
        broken, self._executor = self._executor, None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class Renderings:
    """Rendered images: from memory, from the bucket, or rendered now and stored."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.pool = RenderPool(origin.settings)
        self.memory: TTLCache[str, bytes] = TTLCache(
            origin.settings.render_memory_entries, MEMORY_SECONDS
        )

    async def get(self, found: Found, number: int, rendition: Rendition, object_key: str) -> bytes:
        metrics = self.origin.metrics
        body = self.memory.get(object_key)
        if body is not None:
            metrics.renditions.labels("memory").inc()
            return body

        async def load() -> bytes:
            try:
                stored = await self.origin.store.get_bytes(object_key)
            except ObjectMissing:
                pass
            else:
                metrics.renditions.labels("bucket").inc()
                return stored
            started = time.perf_counter()
            image = await self.pool.render(lambda: self._job(found, number, rendition))
            metrics.render_seconds.observe(time.perf_counter() - started)
            metrics.renditions.labels("rendered").inc()
            await self._store(object_key, image, rendition.media_type)
            return image

        loaded = await self.memory.get_or_load(object_key, load)
        assert loaded is not None
        return loaded

    async def _job(self, found: Found, number: int, rendition: Rendition) -> RenderJob:
        """Read the frame (whole: a decoder needs all of it) and the metadata."""
        index = found.index
        try:
            frame = await self.origin.store.get_bytes(found.layout.frame_of(index, number))
        except ObjectMissing:
            frame = b""
        metadata = await self.origin.metadata.instance_object(found)
        if len(frame) != index.frame(number).size or metadata is None:
            self.origin.indexes.mark_stale(found)
            raise NotThere()
        return RenderJob(metadata, frame, index.transfer_syntax_uid, number, rendition)

    async def _store(self, object_key: str, body: bytes, media_type: str) -> None:
        """Keep the rendition in the bucket (best effort: the answer does not depend on it)."""
        try:
            await self.origin.store.put_bytes(object_key, body, media_type, tagging=tagging())
        except S3Error as exc:
            log.warning("rendered image not stored (%s): %s", object_key, exc)

    def close(self) -> None:
        self.pool.close()


# Endpoints -------------------------------------------------------------------------------


async def rendered_endpoint(request: Request) -> Response:
    """``.../frames/{n}/rendered`` and ``.../instances/{I}/rendered``."""
    origin: Origin = request.app.state.origin
    label(request.scope, route="rendered", mode="-")
    response = await _rendered(request, origin, thumbnail=False)
    if response.status_code in SERVED:
        record_read(origin.recorder, request.scope, request.path_params["study"])
    return response


async def thumbnail_endpoint(request: Request) -> Response:
    """``.../thumbnail`` of an instance, a frame, a series or a study."""
    origin: Origin = request.app.state.origin
    label(request.scope, route="thumbnail", mode="-")
    if "instance" in request.path_params:
        response = await _rendered(request, origin, thumbnail=True)
    else:
        response = await _representative_thumbnail(request, origin)
    if response.status_code in SERVED:
        record_read(origin.recorder, request.scope, request.path_params["study"])
    return response


def _rendition(request: Request, origin: Origin, *, thumbnail: bool) -> Rendition:
    settings = origin.settings
    size = settings.thumbnail_size
    return parse_rendition(
        request.query_params,
        request.headers.get("accept"),
        default_quality=settings.render_jpeg_quality,
        max_side=THUMBNAIL_MAX_SIDE if thumbnail else settings.render_max_side,
        default_viewport=Viewport(size, size) if thumbnail else None,
    )


async def _rendered(request: Request, origin: Origin, *, thumbnail: bool) -> Response:
    """Rendered frames and instance/frame thumbnails: checks in the frames' order."""
    params = request.path_params
    try:
        key = InstanceKey(params["study"], params["series"], params["instance"])
        numbers: tuple[int, ...] | None = None
        if "frames" in params:
            numbers = parse_frame_list(params["frames"], origin.settings.max_frames_per_request)
        rendition = _rendition(request, origin, thumbnail=thumbnail)
    except (InvalidUID, InvalidFrameList, InvalidRendition) as exc:
        return error_response(400, str(exc))
    except UnacceptableRendition as exc:
        if thumbnail or (numbers is not None and len(numbers) == 1):
            return error_response(406, str(exc), available=exc.available)
        # Several frames (an image/gif, say) are refused for their number, whatever the
        # Accept: one refusal that points at frames/{n}/rendered, not two that disagree.
        refusal = exc
        return await answer_located(
            request, origin, key, "rendered",
            lambda found: _refuse_rendition(found, numbers, refusal),
        )
    # What the bucket lacks: the upstream's rendering, when there is one (as for frames).
    return await answer_located(
        request, origin, key, "thumbnail" if thumbnail else "rendered",
        lambda found: _of_instance(request, origin, found, numbers, rendition, thumbnail),
    )


async def _of_instance(
    request: Request,
    origin: Origin,
    found: Found,
    numbers: tuple[int, ...] | None,
    rendition: Rendition,
    thumbnail: bool,
) -> Response:
    """The frame asked for (a thumbnail: the middle one) of one committed generation."""
    count = found.index.number_of_frames
    if count == 0:
        return error_response(404, "the instance has no image to render")
    if numbers is not None:
        try:
            check_in_range(numbers, count)
        except InvalidFrameList as exc:
            return error_response(400, str(exc))
        if len(numbers) > 1:
            return _one_frame_only(f"{len(numbers)} frames")
        number = numbers[0]
    elif thumbnail:
        number = (count + 1) // 2  # the middle of a stack shows it best
    elif count > 1:
        return _one_frame_only(f"this instance's {count} frames")
    else:
        number = 1
    return await _answer(request, origin, found, number, rendition)


async def _refuse_rendition(
    found: Found, numbers: tuple[int, ...] | None, refusal: UnacceptableRendition
) -> Response:
    """The 406 for an unacceptable Accept: the several-frames one when that is the reason."""
    count = found.index.number_of_frames
    if numbers is not None and len(numbers) > 1:
        return _one_frame_only(f"{len(numbers)} frames")
    if numbers is None and count > 1:
        return _one_frame_only(f"this instance's {count} frames")
    return error_response(406, str(refusal), available=refusal.available)


def _one_frame_only(what: str) -> Response:
    """The one refusal for a rendering of several frames, whatever media type was asked."""
    return error_response(
        406,
        f"framecdn renders one frame at a time and makes no rendering of {what} (no "
        "image/gif, no video); ask .../frames/{n}/rendered for one frame as image/jpeg or "
        "image/png",
        available=[],
    )


async def _representative_thumbnail(request: Request, origin: Origin) -> Response:
    """A series' (or study's) thumbnail: that of its first image instance."""
    params = request.path_params
    try:
        study = validate_uid(params["study"], what="StudyInstanceUID")
        series = params.get("series")
        if series is not None:
            validate_uid(series, what="SeriesInstanceUID")
        rendition = _rendition(request, origin, thumbnail=True)
    except (InvalidUID, InvalidRendition) as exc:
        return error_response(400, str(exc))
    except UnacceptableRendition as exc:
        return error_response(406, str(exc), available=exc.available)
    scope = read_scope(request)
    try:
        objects = await origin.metadata.objects_in_scope(scope, study, series)
        key = representative(objects)
        found = await origin.indexes.locate(key, scope) if key is not None else None
    except S3Error as exc:
        return s3_error_response(request, exc)
    if found is None or found.index.number_of_frames == 0:
        upstream = origin.readthrough.proxy_for(scope, study)
        if upstream is not None:  # the bucket has no image of it: the PACS may
            label(request.scope, mode="upstream")
            return await upstream.forward(request, route="thumbnail", not_found="not found")
        return error_response(404, "not found")
    number = (found.index.number_of_frames + 1) // 2
    try:
        return await _answer(request, origin, found, number, rendition)
    except NotThere:
        return error_response(404, "frame not found (instance is being evicted)")


def _value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value") or [None]
    return values[0]


def representative(objects: list[dict[str, Any]]) -> InstanceKey | None:
    """The instance a series or study thumbnail shows: of the instances with pixel data,
    the first by (SeriesNumber, SeriesInstanceUID, InstanceNumber, SOPInstanceUID)."""

    def order(obj: dict[str, Any]) -> tuple[float, str, float, str]:
        series_number, instance_number = _value(obj, "00200011"), _value(obj, "00200013")
        return (
            float(series_number) if isinstance(series_number, int | float) else float("inf"),
            str(_value(obj, "0020000E")),
            float(instance_number) if isinstance(instance_number, int | float) else float("inf"),
            str(_value(obj, "00080018")),
        )

    images = [obj for obj in objects if "7FE00010" in obj]
    if not images:
        return None
    first = min(images, key=order)
    try:
        return InstanceKey(
            str(_value(first, "0020000D")), str(_value(first, "0020000E")),
            str(_value(first, "00080018")),
        )
    except InvalidUID:
        return None


async def _answer(
    request: Request, origin: Origin, found: Found, number: int, rendition: Rendition
) -> Response:
    """The rendition of ``number``: 304 on a matching ETag, else the image."""
    served_from(request.scope, found.layout)
    index = found.index
    name = rendition.object_name(index.frame(number).sha256, index.metadata_sha256)
    digest = name.rsplit("-", 1)[1].split(".", 1)[0]
    headers = {
        "Cache-Control": origin.settings.frame_cache_control,
        "Vary": "Accept",
        "ETag": f'"{digest}"',
    }
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    object_key = found.layout.rendition_of(index, number, name)
    try:
        body = await origin.renderings.get(found, number, rendition, object_key)
    except CannotRender as exc:
        if exc.status >= 500:
            return server_error_response(request, exc.status, exc.reason, exc.reason)
        return error_response(exc.status, exc.reason)
    except RenderBusy:
        return server_error_response(
            request, 503, "rendering busy", "every render worker busy and the queue full",
            retry_after=origin.settings.retry_after_seconds,
        )
    except concurrent.futures.BrokenExecutor as exc:
        return server_error_response(
            request, 503, "rendering unavailable", f"render worker died: {exc!r}",
            retry_after=origin.settings.retry_after_seconds,
        )
    except S3Error as exc:
        return s3_error_response(request, exc)
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers, media_type=rendition.media_type)
    return Response(body, status_code=200, headers=headers, media_type=rendition.media_type)
