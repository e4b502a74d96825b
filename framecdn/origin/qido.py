"""QIDO-RS searches: ``/studies``, ``/series``, ``/instances`` and the ones under a study or
series.

With an upstream (and a scope that may reach it) the search is the PACS's: proxied with
the client's query string as given, its answer's URLs rewritten to this origin and its
entries for studies out of scope dropped. Without one, the bucket answers
(:mod:`framecdn.origin.qido_bucket`). Either way the answer is ``application/dicom+json``,
``200 []`` when nothing matches (OHIF takes that; some clients mishandle 204), and never
stored by a shared cache (``FRAMECDN_QIDO_CACHE_CONTROL``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from framecdn.framestore.keys import validate_uid
from framecdn.origin.errors import error_response, s3_error_response
from framecdn.origin.metadata import MEDIA_TYPE, accepts_json
from framecdn.origin.metrics import label
from framecdn.origin.qido_query import (
    INSTANCE_DEFAULTS,
    SERIES_DEFAULTS,
    STUDY_DEFAULTS,
    Level,
    QidoQuery,
    Record,
    page,
    parse_query,
    project,
    warning_header,
)
from framecdn.origin.scope import read_scope
from framecdn.origin.storage import S3Error
from framecdn.origin.urls import dicomweb_root

if TYPE_CHECKING:
    from framecdn.origin.app import Origin


def _defaults(level: Level, study: str | None, series: str | None) -> frozenset[str]:
    """A search outside a study shows the study's defaults too (and outside a series, the
    series'), so each entry says where it belongs."""
    if level == "study":
        return STUDY_DEFAULTS
    if level == "series":
        return SERIES_DEFAULTS if study else SERIES_DEFAULTS | STUDY_DEFAULTS
    shown = INSTANCE_DEFAULTS
    if series is None:
        shown |= SERIES_DEFAULTS
    if study is None:
        shown |= STUDY_DEFAULTS
    return shown


def _level(request: Request) -> Level:
    last = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return {"studies": "study", "series": "series"}.get(last, "instance")  # type: ignore[return-value]


async def qido_endpoint(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    level = _level(request)
    label(request.scope, route=f"qido_{level}", mode="-")
    if not accepts_json(request.headers.get("accept")):
        return error_response(406, f"search results are served as {MEDIA_TYPE}",
                              available=[MEDIA_TYPE])
    params = request.path_params
    study = params.get("study")
    series = params.get("series")
    if study is not None:  # a bad UID or parameter: a Refusal, answered by the app (400)
        validate_uid(study, what="StudyInstanceUID")
    if series is not None:
        validate_uid(series, what="SeriesInstanceUID")
    query = parse_query(request.query_params.multi_items(), level)
    scope = read_scope(request)
    if study is not None and not scope.allows(study):
        return _answer(origin, [], None)  # exactly what a study that is not there gives
    if origin.upstream is not None and scope.upstream:
        label(request.scope, mode="upstream")
        return await origin.upstream.search(request, scope, f"qido_{level}")
    label(request.scope, mode="bucket")
    root_url = dicomweb_root(request, origin.root, origin.settings.public_url)
    try:
        records = await _search(origin, request, query, root_url, study, series)
    except S3Error as exc:
        return s3_error_response(request, exc)
    chosen, more = page(records, query, origin.settings.qido_max_results)
    defaults = _defaults(level, study, series)
    return _answer(origin, [project(query, r, defaults) for r in chosen],
                   warning_header(query, more))


async def _search(
    origin: Origin,
    request: Request,
    query: QidoQuery,
    root_url: str,
    study: str | None,
    series: str | None,
) -> list[Record]:
    scope = read_scope(request)
    search = origin.search
    if query.level == "study":
        return await search.studies_matching(scope, query, root_url)
    if query.level == "series":
        return await search.series_matching(scope, query, root_url, study)
    return await search.instances_matching(scope, query, root_url, study, series)


def _answer(origin: Origin, records: list[Record], warning: str | None) -> Response:
    headers = {"Cache-Control": origin.settings.qido_cache_control, "Vary": "Accept"}
    if warning is not None:
        headers["Warning"] = warning
    body = json.dumps(records, separators=(",", ":")).encode()
    return Response(body, status_code=200, headers=headers, media_type=MEDIA_TYPE)
