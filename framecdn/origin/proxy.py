"""Everything the bucket does not hold, answered by the upstream through this origin.

The client's request goes upstream with its path below the DICOMweb root, its query
string as given and its Accept (:mod:`framecdn.origin.upstream`); the answer comes back
streamed, its URLs pointing at this origin (:mod:`framecdn.origin.rewriting`), with only
the headers that describe the body (``Content-Type``, ``Content-Length`` when the body
is passed as it is, ``Content-Range``, ``ETag``, ``Last-Modified``, a rewritten
``Content-Location``). A proxied answer is ``no-store`` (searches: the QIDO setting):
once the instance is filled, the bucket answers and caches may keep that.

What the upstream says about itself never reaches the client: a 404 is this origin's
own "not found" (the same words as for a study out of scope), other refusals keep their
status with a short reason, and its failures (5xx, refused credentials, unreachable,
too slow) are the origin's opaque 502/504 with a request id. A body the upstream cuts
short is cut short here too (never completed with a short body).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from framecdn.errors import UpstreamError
from framecdn.framestore.keys import InstanceKey, InvalidUID
from framecdn.origin.errors import error_response, server_error_response
from framecdn.origin.metrics import label
from framecdn.origin.qido_query import SERIES_UID, SOP_UID, element_strings
from framecdn.origin.rewriting import (
    BadUpstreamBody,
    UrlRewriter,
    boundary_of,
    replace_bytes,
    rewrite_json_array,
    rewrite_multipart,
    study_of,
)
from framecdn.origin.scope import ReadScope, read_scope
from framecdn.origin.streaming import ClosingStreamingResponse
from framecdn.origin.upstream import (
    InvalidPath,
    Upstream,
    UpstreamResponse,
    UpstreamTimeout,
)
from framecdn.origin.urls import dicomweb_root

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

log = logging.getLogger("framecdn.origin")

#: Headers of the upstream's answer that describe its body (others stay behind).
PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Range", "Accept-Ranges", "ETag",
                           "Last-Modified")
JSON_TYPES = ("application/dicom+json", "application/json")
TEXT_TYPES = ("application/dicom+xml", "application/xml", "text/")
#: Most bytes a search answer read for the origin's own use may have.
MAX_LISTING_BYTES = 64 * 1024 * 1024
NO_STORE = "no-store"


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class UpstreamProxy:
    """Forwards requests to the upstream and streams its rewritten answers back."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.upstream = Upstream(origin.settings)
        self.chunk_size = origin.settings.stream_chunk_bytes

    async def aclose(self) -> None:
        await self.upstream.aclose()

    def _path(self, request: Request) -> str:
        """The request's path below the DICOMweb root, as the client encoded it."""
        raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        prefix = str(request.scope.get("root_path", "")) + self.origin.root + "/"
        if not path.startswith(prefix):
            raise InvalidPath(f"{path!r} is not below {prefix!r}")
        return path[len(prefix) :]

    def count(self, route: str, outcome: str) -> None:
        self.origin.metrics.upstream_requests.labels(route, outcome).inc()

    def failure(self, request: Request, exc: UpstreamError, route: str) -> Response:
        """The origin's opaque 502/504 for an upstream that could not answer."""
        self.count(route, exc.kind)
        reason = "upstream timeout" if isinstance(exc, UpstreamTimeout) else "upstream unavailable"
        return server_error_response(
            request, exc.status, reason, str(exc),
            retry_after=self.origin.settings.retry_after_seconds,
        )

    async def forward(
        self,
        request: Request,
        *,
        route: str,
        not_found: str = "not found",
        keep: Callable[[Any], bool] | None = None,
        cache_control: str = NO_STORE,
        on_success: Callable[[], None] | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> Response:
        """The upstream's answer to this request. ``keep`` filters the entries of a JSON
        array answer (searches out of scope); ``on_success`` runs once a successful answer
        has been passed on whole, ``on_refused`` with the status of any other answer."""
        try:
            path = self._path(request)
            url = self.upstream.url(path)  # checks the path
        except InvalidPath as exc:
            return error_response(400, f"path not allowed: {exc}")
        query = request.scope.get("query_string", b"").decode("latin-1")
        headers = self.upstream.headers_for(request.headers)
        try:
            answer = await self.upstream.open(request.method, path, query, headers)
        except UpstreamError as exc:
            return self.failure(request, exc, route)
        self.count(route, str(answer.status))
        if not (200 <= answer.status < 300 or answer.status == 304):
            if on_refused is not None:
                on_refused(answer.status)
            return await self._refused(request, answer, route, not_found, url.path)
        root_url = dicomweb_root(request, self.origin.root, self.origin.settings.public_url)
        rewriter = UrlRewriter(self.upstream.root, root_url)
        out: dict[str, str] = {"Cache-Control": cache_control, "Vary": "Accept"}
        for name in PASSED_RESPONSE_HEADERS:
            value = answer.headers.get(name)
            if value is not None:
                out[name] = value
        location = answer.headers.get("Content-Location")
        if location is not None:
            out["Content-Location"] = rewriter.url(location)
        if request.method == "HEAD" or answer.status in (204, 304):
            length = answer.headers.get("Content-Length")
            await answer.aclose()
            if length is not None and request.method == "HEAD":
                out["Content-Length"] = length
            if on_success is not None:
                on_success()
            return Response(status_code=answer.status, headers=out)
        body = self._body(answer, rewriter, keep, out)
        if body is None:
            await answer.aclose()
            return server_error_response(
                request, 502, "upstream error",
                f"upstream answered {answer.content_type!r} where a filtered JSON array "
                "was needed",
            )
        return ClosingStreamingResponse(
            _closing(body, answer, request, self.origin, on_success),
            status_code=answer.status,
            headers=out,
        )

    def _body(
        self,
        answer: UpstreamResponse,
        rewriter: UrlRewriter,
        keep: Callable[[Any], bool] | None,
        headers: dict[str, str],
    ) -> AsyncIterator[bytes] | None:
        media = _media(answer.content_type)
        chunks = answer.chunks(self.chunk_size)
        if media in JSON_TYPES or media.endswith("+json"):
            return rewrite_json_array(chunks, rewriter, keep or (lambda _: True))
        if keep is not None:
            return None  # a search answer that cannot be filtered is not passed on
        if media.startswith("multipart/"):
            boundary = boundary_of(answer.content_type)
            if boundary is not None:
                return rewrite_multipart(chunks, boundary, rewriter)
        if media.startswith(TEXT_TYPES) or media.endswith("+xml"):
            old = self.upstream.root.rstrip("/").encode()
            return replace_bytes(chunks, old, rewriter.origin_root.rstrip("/").encode())
        length = answer.headers.get("Content-Length")
        if length is not None:
            headers["Content-Length"] = length  # passed as it is: the length stands
        return chunks

    async def _refused(
        self, request: Request, answer: UpstreamResponse, route: str, not_found: str, url: str
    ) -> Response:
        """An upstream answer other than success, told in the origin's own words."""
        status = answer.status
        try:
            detail = (await answer.read(4096)).decode(errors="replace")[:300]
        except UpstreamError:
            detail = ""
        finally:
            await answer.aclose()
        if status in (404, 410):
            return error_response(404, not_found)
        if status in (401, 403, 407) and not self.upstream.forward_auth:
            return server_error_response(
                request, 502, "upstream refused framecdn's credentials",
                f"upstream answered {status} for {url} (check FRAMECDN_UPSTREAM_*): {detail}",
                retry_after=self.origin.settings.retry_after_seconds,
            )
        if 400 <= status < 500:
            return error_response(status, f"the upstream refused the request ({status})")
        return server_error_response(
            request, 502, "upstream error", f"upstream answered {status} for {url}: {detail}",
            retry_after=self.origin.settings.retry_after_seconds,
        )

    # Searches ----------------------------------------------------------------------------
    async def search(self, request: Request, scope: ReadScope, route: str) -> Response:
        """A QIDO-RS search answered by the upstream; entries of studies out of scope
        (or without a StudyInstanceUID, when the scope is limited) are dropped."""
        keep = None
        if scope.studies is not None:
            def keep(entry: Any) -> bool:
                study = study_of(entry)
                return study is not None and scope.allows(study)
        return await self.forward(
            request, route=route, keep=keep,
            cache_control=self.origin.settings.qido_cache_control,
        )

    async def instances(self, study: str, series: str | None) -> list[InstanceKey] | None:
        """The instances the upstream holds in a study (or series); None if it has none.

        Raises UpstreamError when it cannot tell.
        """
        path = f"studies/{study}/series/{series}/instances" if series else (
            f"studies/{study}/instances"
        )
        route = "check_series" if series else "check_study"
        headers = self.upstream.headers_for({"accept": "application/dicom+json"})
        answer = await self.upstream.open("GET", path, "includefield=0020000E", headers)
        self.count(route, str(answer.status))
        try:
            if answer.status in (404, 204):
                return None
            if answer.status != 200:
                raise UpstreamError(f"upstream answered {answer.status} for {path}")
            body = await answer.read(MAX_LISTING_BYTES)
        finally:
            await answer.aclose()
        try:
            entries = json.loads(body) if body.strip() else []
        except ValueError as exc:
            raise UpstreamError(f"upstream's {path} is not JSON: {exc}") from exc
        keys: list[InstanceKey] = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            sop = element_strings(entry.get(SOP_UID))
            in_series = element_strings(entry.get(SERIES_UID)) or ([series] if series else [])
            try:
                keys.append(InstanceKey(study, in_series[0], sop[0]))
            except (IndexError, InvalidUID):
                continue  # an entry that does not name a storable instance
        return keys or None


async def _closing(
    body: AsyncIterator[bytes],
    answer: UpstreamResponse,
    request: Request,
    origin: Origin,
    on_success: Callable[[], None] | None,
) -> AsyncIterator[bytes]:
    """The body, then the upstream connection released; a fault cuts the stream."""
    try:
        async for chunk in body:
            yield chunk
        if on_success is not None:
            on_success()
    except (UpstreamError, BadUpstreamBody) as exc:
        origin.metrics.aborted_streams.inc()
        log.warning("%s %s: upstream body cut: %s", request.method, request.url.path, exc)
        raise
    finally:
        await answer.aclose()


async def proxy_endpoint(request: Request) -> Response:
    """Anything below the DICOMweb root that no other route answers: the upstream's.

    Whole-study/series/instance retrieval, bulk data, rendered and thumbnail resources.
    A path naming a study out of scope answers exactly like a missing one; a scope that
    is limited to some studies reaches nothing that is not below one of them.
    """
    origin: Origin = request.app.state.origin
    label(request.scope, route="proxy", mode="upstream")
    scope = read_scope(request)
    path = request.path_params.get("path", "")
    segments = path.split("/")
    study = segments[1] if len(segments) > 1 and segments[0] == "studies" else None
    if origin.upstream is None or not scope.upstream:
        return error_response(404, "not found")
    if study is not None and not scope.allows(study):
        return error_response(404, "not found")
    if study is None and scope.studies is not None:
        return error_response(404, "not found")
    return await origin.upstream.forward(request, route="proxy")
