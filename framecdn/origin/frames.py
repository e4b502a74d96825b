"""``GET|HEAD {root}/studies/{S}/series/{Se}/instances/{I}/frames/{list}``.

Order of checks: UIDs and frame-list syntax (400), the instance index (404), frame
numbers against NumberOfFrames (400), Accept (406), validators (304), then the
delivery: redirect / accel for a single-part single frame when so configured,
otherwise the bytes are streamed (single part, with Range, or multipart).

Every object key comes from the index (its generation), so one answer reads one
generation. When the first frame turns out missing, the instance may have been
replaced under a cached index (its old generation removed): the index is read again,
once, and the answer comes from the generation it names now, if it is another one.

Only what was served (:data:`SERVED`) counts as a read of the study for the sweeper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from framecdn.errors import FramecdnError
from framecdn.framestore.keys import InstanceKey
from framecdn.origin.errors import error_response, s3_error_response
from framecdn.origin.framelist import check_in_range, parse_frame_list
from framecdn.origin.instances import Found
from framecdn.origin.markers import record_read, served_from
from framecdn.origin.metrics import label
from framecdn.origin.multipart import MultipartLayout, Part
from framecdn.origin.negotiation import Representation, negotiate
from framecdn.origin.ranges import RangeNotSatisfiable, if_range_allows, parse_range
from framecdn.origin.scope import read_scope
from framecdn.origin.storage import ObjectMissing, ObjectStream, S3Error
from framecdn.origin.streaming import (
    ClosingStreamingResponse,
    multipart_body,
    single_body,
    sized_as_indexed,
)
from framecdn.origin.urls import dicomweb_root, frame_url

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

#: Statuses that served the resource (the 307 of ``redirect`` delivery hands the frame
#: over too): only these record an access, so guessing UIDs writes nothing.
SERVED = frozenset({200, 206, 304, 307})


class FrameVanished(FramecdnError):
    """The first frame of an answer is missing: its index has been condemned."""


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison, as If-None-Match requires (RFC 9110 §13.1.2)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def single_etag(sha256: str, representation: Representation) -> str:
    tag = hashlib.sha256(representation.tag.encode()).hexdigest()[:8]
    return f'"{sha256[:40]}-{tag}"'


async def frames_endpoint(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    response = await _frames(request, origin)
    if response.status_code in SERVED:
        record_read(origin.recorder, request.scope, request.path_params["study"])
    return response


async def _frames(request: Request, origin: Origin) -> Response:
    label(request.scope, route="frames", mode=origin.settings.delivery)
    params = request.path_params
    key = InstanceKey(params["study"], params["series"], params["instance"])
    numbers = parse_frame_list(params["frames"], origin.settings.max_frames_per_request)
    return await answer_located(
        request, origin, key, "frames", lambda found: _answer(request, origin, found, numbers)
    )


async def answer_located(
    request: Request,
    origin: Origin,
    key: InstanceKey,
    route: str,
    answer: Callable[[Found], Awaitable[Response]],
) -> Response:
    """``answer`` from the instance as this request's read scope finds it in the bucket.

    What the bucket does not hold (or cannot say now) the upstream answers, when this
    request may reach one. An answer that finds its index condemned (FrameVanished) looks
    once more: the instance may have been replaced meanwhile.
    """
    scope = read_scope(request)
    for _attempt in range(2):
        try:
            found = await origin.indexes.locate(key, scope)
        except S3Error as exc:
            if origin.readthrough.proxy_for(scope, key.study) is None:
                return s3_error_response(request, exc)
            found = None  # the bucket cannot answer now: the upstream can
        if found is None:
            proxied = await origin.readthrough.instance(
                request, scope, key, route, "instance not found"
            )
            if proxied is not None:
                label(request.scope, mode="upstream")
                return proxied
            return error_response(404, "instance not found")
        try:
            return await answer(found)
        except FrameVanished:
            continue  # the index that named it is condemned now; look again
    return error_response(404, "frame not found (instance is being evicted)")


async def _answer(
    request: Request, origin: Origin, found: Found, numbers: tuple[int, ...]
) -> Response:
    """The answer from one committed generation of the instance."""
    key = found.key
    served_from(request.scope, found.layout)
    index = found.index
    check_in_range(numbers, index.number_of_frames)  # Refusals answer through the app
    stored = Representation(False, index.media_type, index.transfer_syntax_uid)
    representation = negotiate(request.headers.get("accept"), stored, len(numbers))

    headers = {
        "Cache-Control": origin.settings.frame_cache_control,
        "Vary": "Accept",
    }
    if representation.multipart:
        root_url = dicomweb_root(request, origin.root, origin.settings.public_url)
        parts = [
            Part(frame_url(root_url, key, n), index.frame(n).size, index.frame(n).sha256)
            for n in numbers
        ]
        layout = MultipartLayout.build(representation.part_content_type, parts)
        etag = f'"{layout.boundary.removeprefix("framecdn-")}"'
        headers["ETag"] = etag
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return await _stream_multipart(
            request, origin, found, numbers, layout, representation, headers
        )

    number = numbers[0]
    entry = index.frame(number)
    etag = single_etag(entry.sha256, representation)
    headers["ETag"] = etag
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    object_key = found.layout.frame_of(index, number)
    if origin.delivery.mode == "redirect":
        label(request.scope, mode="redirect")
        return origin.delivery.redirect(object_key, headers)
    if origin.delivery.mode == "accel":
        label(request.scope, mode="accel")
        headers["Content-Type"] = representation.part_content_type
        return origin.delivery.accel(object_key, headers)
    label(request.scope, mode="stream")
    return await _stream_single(
        request, origin, found, object_key, entry.size, representation, headers
    )


async def _stream_single(
    request: Request,
    origin: Origin,
    found: Found,
    object_key: str,
    size: int,
    representation: Representation,
    headers: dict[str, str],
) -> Response:
    headers["Accept-Ranges"] = "bytes"
    media_type = representation.part_content_type
    byte_range = None
    if if_range_allows(request.headers.get("if-range"), headers["ETag"]):
        try:
            byte_range = parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return error_response(416, "range not satisfiable", headers=headers)
    status = 200
    length = size
    if byte_range is not None:
        status = 206
        length = byte_range[1] - byte_range[0] + 1
        headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    stream = await _open_first_frame(request, origin, found, object_key, byte_range)
    if isinstance(stream, Response):
        return stream
    if not sized_as_indexed(stream, length):
        await stream.aclose()
        origin.indexes.mark_stale(found)  # the store holds another object than indexed
        return error_response(404, "frame object does not match the index (being evicted)")
    body = single_body(stream, length, _on_broken(origin, found), origin.chunk_size)
    return ClosingStreamingResponse(
        body, status_code=status, headers=headers, media_type=media_type
    )


async def _stream_multipart(
    request: Request,
    origin: Origin,
    found: Found,
    numbers: tuple[int, ...],
    layout: MultipartLayout,
    representation: Representation,
    headers: dict[str, str],
) -> Response:
    media_type = representation.response_content_type(layout.boundary)
    headers["Content-Length"] = str(layout.content_length)
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers, media_type=media_type)
    keys = [found.layout.frame_of(found.index, n) for n in numbers]
    first = await _open_first_frame(request, origin, found, keys[0])
    if isinstance(first, Response):
        return first
    body = multipart_body(
        origin.store,
        layout,
        keys,
        first,
        _on_broken(origin, found),
        prefetch=origin.prefetch,
        chunk_size=origin.chunk_size,
    )
    return ClosingStreamingResponse(body, status_code=200, headers=headers, media_type=media_type)


async def _open_first_frame(
    request: Request,
    origin: Origin,
    found: Found,
    object_key: str,
    byte_range: tuple[int, int] | None = None,
) -> ObjectStream | Response:
    """Open the first frame before the status line, so a missing one is still a clean 404.

    Only the store's "no such key" condemns the index (FrameVanished: the caller looks
    again); a store that fails or does not answer is a 502/503/504 and condemns nothing.
    """
    try:
        return await origin.store.open(object_key, byte_range=byte_range)
    except ObjectMissing as exc:
        origin.indexes.mark_stale(found)
        raise FrameVanished(object_key) from exc
    except S3Error as exc:
        return s3_error_response(request, exc)


def _on_broken(origin: Origin, found: Found) -> Callable[[], None]:
    """What a body does when a frame turns out missing or short mid-stream."""

    def broken() -> None:
        origin.indexes.mark_stale(found)
        origin.metrics.aborted_streams.inc()

    return broken
