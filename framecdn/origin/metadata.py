"""Instance, series and study metadata as ``application/dicom+json``.

The bucket holds each instance's DICOM JSON object with PixelData as a BulkDataURI
relative to the DICOMweb root; we rewrite it into an absolute URL of this origin
(as the client reached it) and wrap the objects in an array. Only committed
instances (with an index) are served. Series and study answers are assembled from
the instances under that prefix and cached briefly (``metadata_listing_seconds``);
instance objects are cached longer (``metadata_cache_seconds``: they do not change).
gzip is offered here — never on frames. Only answers that were served (200, 304)
count as a read of the study for the sweeper; a 404 writes nothing to the bucket.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from starlette.requests import Request
from starlette.responses import Response

from framecdn.framestore.keys import InstanceKey, InvalidUID, KeyLayout, validate_uid
from framecdn.origin.cache import TTLCache
from framecdn.origin.errors import error_response, s3_error_response
from framecdn.origin.frames import SERVED, etag_matches
from framecdn.origin.instances import Found
from framecdn.origin.markers import record_read, served_from
from framecdn.origin.metrics import label
from framecdn.origin.negotiation import accepts
from framecdn.origin.scope import ReadScope, read_scope
from framecdn.origin.storage import ObjectMissing, S3Error
from framecdn.origin.urls import dicomweb_root

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

MEDIA_TYPE = "application/dicom+json"
SOP_INSTANCE_UID = "00080018"
#: What metadata can be labelled as: DICOM JSON, which is also plain JSON.
_OFFERED = (MEDIA_TYPE, "application/json")
_GZIP_MIN_BYTES = 1024
ObjectsLoader = Callable[[], Awaitable[list[dict[str, Any]]]]


def rewrite_bulkdata(element_map: dict[str, Any], root_url: str) -> dict[str, Any]:
    """A copy of a DICOM JSON object with every relative BulkDataURI made absolute."""
    out: dict[str, Any] = {}
    for tag, element in element_map.items():
        if isinstance(element, dict):
            uri = element.get("BulkDataURI")
            if isinstance(uri, str):
                element = {**element, "BulkDataURI": urljoin(root_url, uri)}
            elif element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
                element = {
                    **element,
                    "Value": [
                        rewrite_bulkdata(item, root_url) if isinstance(item, dict) else item
                        for item in element["Value"]
                    ],
                }
        out[tag] = element
    return out


def accepts_json(accept: str | None) -> bool:
    """True when the Accept header admits DICOM JSON (absent: anything goes)."""
    return any(accepts(accept, offered) for offered in _OFFERED)


def accepts_gzip(accept_encoding: str | None) -> bool:
    for element in (accept_encoding or "").split(","):
        coding, *params = [piece.strip().lower() for piece in element.split(";")]
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params)
        if coding in ("gzip", "*") and not refused:
            return True
    return False


@dataclass(frozen=True, slots=True)
class RenderedMetadata:
    body: bytes
    etag: str
    gzipped: bytes | None
    #: SOP Instance UIDs of the instances in the answer (read-through compares them).
    instances: frozenset[str] = frozenset()

    @classmethod
    def of(cls, objects: list[dict[str, Any]]) -> RenderedMetadata:
        body = json.dumps(objects, separators=(",", ":")).encode()
        etag = hashlib.sha256(body).hexdigest()[:40]
        gzipped = gzip.compress(body, 6, mtime=0) if len(body) >= _GZIP_MIN_BYTES else None
        uids = frozenset(
            str(value[0])
            for obj in objects
            if isinstance(value := obj.get(SOP_INSTANCE_UID, {}).get("Value"), list) and value
        )
        return cls(body, etag, gzipped, uids)


class MetadataService:
    """Loads and assembles DICOM JSON; caches instance objects and rendered answers."""

    def __init__(self, origin: Origin) -> None:
        settings = origin.settings
        self.origin = origin
        # Keyed by the write (index identity) too: a replaced instance's new metadata
        # is served as soon as its new index is.
        self.objects: TTLCache[tuple[str, InstanceKey, str], dict[str, Any]] = TTLCache(
            settings.metadata_cache_entries, settings.metadata_cache_seconds
        )
        self.rendered: TTLCache[tuple[str, str], RenderedMetadata] = TTLCache(
            settings.metadata_listing_entries, settings.metadata_listing_seconds
        )
        self.fetch_concurrency = settings.metadata_fetch_concurrency

    async def instance_object(self, found: Found) -> dict[str, Any] | None:
        """The stored DICOM JSON object of a committed instance, or None.

        None when the store says the object is missing: the index is condemned then
        (only the store's "no such key" does that; a failing store raises S3Error).
        """
        object_key = found.layout.metadata_of(found.index)

        async def load() -> dict[str, Any] | None:
            try:
                raw = await self.origin.store.get_bytes(object_key)
            except ObjectMissing:
                self.origin.indexes.mark_stale(found)
                return None
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise S3Error(f"{object_key} is not JSON: {exc}") from exc
            obj = data[0] if isinstance(data, list) and data else data
            if not isinstance(obj, dict):
                raise S3Error(f"{object_key} is not a DICOM JSON object")
            return obj

        cache_key = (found.layout.prefix, found.key, found.index.identity)
        return await self.objects.get_or_load(cache_key, load)

    async def current_object(
        self, lookup: Callable[[], Awaitable[Found | None]]
    ) -> dict[str, Any] | None:
        """The DICOM JSON of the instance ``lookup`` finds, looking twice if need be.

        A metadata object found missing condemns the index that named it; when the
        instance was replaced meanwhile (the old generation removed), the second look
        finds the new index and its metadata.
        """
        for _attempt in range(2):
            found = await lookup()
            if found is None:
                return None
            obj = await self.instance_object(found)
            if obj is not None:
                return obj
        return None

    async def instances_under(self, prefix: str, layout: KeyLayout) -> list[InstanceKey]:
        keys = await self.origin.store.list_keys(prefix)
        found = (layout.parse_index_key(k) for k in keys)
        return [key for key in found if key is not None]

    async def objects_under(self, prefix: str, layout: KeyLayout) -> list[dict[str, Any]]:
        """The DICOM JSON of every committed instance under ``prefix`` of ``layout``."""
        semaphore = asyncio.Semaphore(self.fetch_concurrency)

        async def one(key: InstanceKey) -> dict[str, Any] | None:
            async def lookup() -> Found | None:
                index = await self.origin.indexes.get(key, layout)
                return None if index is None else Found(layout, index)

            async with semaphore:
                return await self.current_object(lookup)

        keys = await self.instances_under(prefix, layout)
        results = await asyncio.gather(*(one(key) for key in keys))
        return [obj for obj in results if obj is not None]

    async def objects_in_scope(
        self, scope: ReadScope, study: str, series: str | None = None
    ) -> list[dict[str, Any]]:
        """A study's (or series') instances under every layout the scope may read."""
        objects: list[dict[str, Any]] = []
        for layout in scope.layouts_for(study):
            prefix = layout.series_prefix(study, series) if series else layout.study_prefix(study)
            objects += await self.objects_under(prefix, layout)
        return objects

    async def render(
        self, level_key: str, root_url: str, load: ObjectsLoader
    ) -> RenderedMetadata | None:
        async def build() -> RenderedMetadata | None:
            objects = await load()
            if not objects:
                return None
            return RenderedMetadata.of([rewrite_bulkdata(o, root_url) for o in objects])

        return await self.rendered.get_or_load((level_key, root_url), build)


async def metadata_endpoint(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    response = await _metadata(request, origin)
    if response.status_code in SERVED:
        record_read(origin.recorder, request.scope, request.path_params["study"])
    return response


async def _metadata(request: Request, origin: Origin) -> Response:
    service: MetadataService = origin.metadata
    params = request.path_params
    label(request.scope, route="metadata", mode="-")
    if not accepts_json(request.headers.get("accept")):
        return error_response(406, f"metadata is served as {MEDIA_TYPE}", available=[MEDIA_TYPE])
    load: ObjectsLoader
    scope = read_scope(request)
    key: InstanceKey | None = None
    series: str | None = None
    try:
        study = validate_uid(params["study"], what="StudyInstanceUID")
        layouts = scope.layouts_for(study)
        if "instance" in params:
            key = InstanceKey(study, params["series"], params["instance"])
            level_key = "|".join(layout.instance_prefix(key) for layout in layouts)

            async def load() -> list[dict[str, Any]]:
                obj = await service.current_object(
                    functools.partial(origin.indexes.locate, key, scope)
                )
                return [obj] if obj is not None else []

            label(request.scope, route="metadata_instance")
        elif "series" in params:
            series = validate_uid(params["series"], what="SeriesInstanceUID")
            level_key = "|".join(layout.series_prefix(study, series) for layout in layouts)
            load = functools.partial(service.objects_in_scope, scope, study, series)
            label(request.scope, route="metadata_series")
        else:
            level_key = "|".join(layout.study_prefix(study) for layout in layouts)
            load = functools.partial(service.objects_in_scope, scope, study)
            label(request.scope, route="metadata_study")
    except InvalidUID as exc:
        return error_response(400, str(exc))
    if not level_key:  # out of scope: answered exactly like a study that is not there
        return error_response(404, "not found")
    root_url = dicomweb_root(request, origin.root, origin.settings.public_url)
    route = request.scope["framecdn"]["route"]
    try:
        rendered = await service.render(level_key, root_url, load)
    except S3Error as exc:
        if origin.readthrough.proxy_for(scope, study) is None:
            return s3_error_response(request, exc)
        rendered = None  # the bucket cannot answer now: the upstream can
    if key is not None and rendered is None:
        proxied = await origin.readthrough.instance(request, scope, key, route, "not found")
    elif key is None:
        held = rendered.instances if rendered is not None else frozenset()
        proxied = await origin.readthrough.listing(
            request, scope, study, series, held, level_key, route
        )
    else:
        proxied = None
    if proxied is not None:
        label(request.scope, mode="upstream")
        return proxied
    if rendered is None:
        return error_response(404, "not found")
    if len(layouts) == 1:  # an all-sites caller's answer may mix sites: frames say which
        served_from(request.scope, layouts[0])
    use_gzip = rendered.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding"))
    etag = f'"{rendered.etag}-gz"' if use_gzip else f'"{rendered.etag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": origin.settings.metadata_cache_control,
        "Vary": "Accept, Accept-Encoding",
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    body = rendered.gzipped if use_gzip else rendered.body
    assert body is not None
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=MEDIA_TYPE)
    return Response(body, status_code=200, headers=headers, media_type=MEDIA_TYPE)
