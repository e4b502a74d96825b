"""The origin app: ``create_app(settings)`` wires storage, caches, routes and middleware.

One :class:`Origin` per process holds everything shared between requests: the S3
client (one pooled aiohttp session), the index and metadata caches, the presigners,
the metrics and the access recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from framecdn.errors import Refusal
from framecdn.framestore.access import AccessRecorder
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import KeyLayout
from framecdn.origin.access_log import LOG_FORMAT, send_access_log
from framecdn.origin.auth import (
    AUTHORIZE_PATH,
    AccessControl,
    AccessMiddleware,
    authorize_endpoint,
    warn_if_open,
)
from framecdn.origin.cors import CORSMiddleware
from framecdn.origin.delivery import Delivery
from framecdn.origin.errors import refusal_response, unexpected_error
from framecdn.origin.fill_requests import FillRequests
from framecdn.origin.frames import frames_endpoint
from framecdn.origin.health import healthz, readyz
from framecdn.origin.instances import InstanceIndexes
from framecdn.origin.markers import SiteReads, flush_forever, flush_once
from framecdn.origin.metadata import MetadataService, metadata_endpoint
from framecdn.origin.metrics import Metrics, MetricsMiddleware
from framecdn.origin.proxy import UpstreamProxy, proxy_endpoint
from framecdn.origin.qido import qido_endpoint
from framecdn.origin.qido_bucket import BucketSearch
from framecdn.origin.readthrough import ReadThrough
from framecdn.origin.rendered import Renderings, rendered_endpoint, thumbnail_endpoint
from framecdn.origin.scope import ReadScope
from framecdn.origin.storage import ObjectStore
from framecdn.origin.urls import normalise_root


class Origin:
    """Per-process state shared by all requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = normalise_root(settings.root_path)
        self.layout = KeyLayout(settings.prefix)
        self.metrics = Metrics()
        self.store = ObjectStore(settings)
        #: Where requests read when no access control narrows it: this origin's prefix.
        self.default_scope = ReadScope((self.layout,))
        self.indexes = InstanceIndexes(settings, self.store, self.metrics)
        self.metadata = MetadataService(self)
        #: Searches answered from the bucket (without an upstream).
        self.search = BucketSearch(self)
        #: The PACS behind framecdn, when FRAMECDN_UPSTREAM_URL is set.
        self.upstream = UpstreamProxy(self) if settings.upstream_url else None
        self.readthrough = ReadThrough(self)
        self.fills = FillRequests(settings, self.metrics)
        self.renderings = Renderings(self)
        self.delivery = Delivery(settings)
        self.recorder: SiteReads = AccessRecorder(settings.access_marker_seconds)
        self.prefetch = settings.frame_prefetch
        self.chunk_size = settings.stream_chunk_bytes
        #: Who may read what (docs/security.md); with auth off only the query-token strip.
        self.access = AccessControl(settings)

    async def aclose(self) -> None:
        await self.fills.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()
        self.renderings.close()
        await self.access.aclose()
        await self.store.aclose()


def _routes(origin: Origin) -> list[Route]:
    root = origin.root
    series = root + "/studies/{study}/series/{series}"
    instance = series + "/instances/{instance}"
    methods = ["GET", "HEAD"]

    async def metrics_endpoint(request: Request) -> Response:
        return origin.metrics.render(request)

    return [
        Route(instance + "/frames/{frames}", frames_endpoint, methods=methods),
        Route(instance + "/frames/{frames}/rendered", rendered_endpoint, methods=methods),
        Route(instance + "/rendered", rendered_endpoint, methods=methods),
        Route(instance + "/frames/{frames}/thumbnail", thumbnail_endpoint, methods=methods),
        Route(instance + "/thumbnail", thumbnail_endpoint, methods=methods),
        Route(series + "/thumbnail", thumbnail_endpoint, methods=methods),
        Route(root + "/studies/{study}/thumbnail", thumbnail_endpoint, methods=methods),
        Route(instance + "/metadata", metadata_endpoint, methods=methods),
        Route(series + "/metadata", metadata_endpoint, methods=methods),
        Route(root + "/studies/{study}/metadata", metadata_endpoint, methods=methods),
        # QIDO-RS searches
        Route(root + "/studies", qido_endpoint, methods=methods),
        Route(root + "/series", qido_endpoint, methods=methods),
        Route(root + "/instances", qido_endpoint, methods=methods),
        Route(root + "/studies/{study}/series", qido_endpoint, methods=methods),
        Route(root + "/studies/{study}/instances", qido_endpoint, methods=methods),
        Route(series + "/instances", qido_endpoint, methods=methods),
        Route("/healthz", healthz, methods=methods),
        Route("/readyz", readyz, methods=methods),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(AUTHORIZE_PATH, authorize_endpoint, methods=methods),
        # Everything else below the root: the upstream's (404 without one). Keep it last.
        Route(root + "/{path:path}", proxy_endpoint, methods=methods),
    ]


def create_app(settings: Settings) -> Starlette:
    """The origin as an ASGI app (state is created here, connections on first use)."""
    warn_if_open(settings)
    origin = Origin(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        flusher = asyncio.create_task(
            flush_forever(
                origin.store, origin.recorder, settings.access_flush_seconds
            )
        )
        reloads = _reload_on_hangup(origin.access)
        try:
            yield
        finally:
            reloads()
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    flush_once(origin.store, origin.recorder),
                    timeout=settings.s3_connect_timeout + settings.s3_read_timeout,
                )
            await origin.aclose()

    app = Starlette(
        routes=_routes(origin),
        lifespan=lifespan,
        exception_handlers={Refusal: refusal_response, Exception: unexpected_error},
    )
    app.state.origin = origin
    # The middleware added last is the outermost: metrics also count (and log) CORS
    # preflights and refused requests; CORS answers preflights before access control
    # (browsers send no credential on them) and puts its headers on a 401 too.
    app.add_middleware(AccessMiddleware, access=origin.access, store=origin.store)
    app.add_middleware(CORSMiddleware, origins=settings.cors_origins, credentials=settings.auth)
    app.add_middleware(MetricsMiddleware, metrics=origin.metrics)
    return app


def _reload_on_hangup(access: AccessControl) -> Callable[[], None]:
    """SIGHUP re-reads the API keys file (as nginx reloads on it); returns the undo.

    Only where the signal can be had: the main thread of a serving process (``framecdn
    serve`` and each of its workers), not an app run from another thread.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, access.reload)
    except (RuntimeError, ValueError):  # not the main thread
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` (each worker builds its own state)."""
    settings = Settings.from_env()
    if not logging.getLogger().handlers:  # spawned workers log as the CLI does
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    send_access_log(settings.access_log)
    return create_app(settings)
