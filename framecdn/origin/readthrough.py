"""Read-through: what the bucket lacks comes from the upstream at once, and gets filled.

A frame or instance-metadata request for an instance the bucket does not hold is
proxied to the upstream (the viewer never waits for a whole-instance copy) and, once
that answer is out, the instance is queued at the fill service, so the next requests
come from the bucket.

Series and study metadata are never answered incomplete. The bucket's answer stands
only when it holds every instance the upstream lists for that series or study (one
QIDO-RS request upstream, whose verdict "complete" is reused for
``FRAMECDN_METADATA_LISTING_SECONDS``); otherwise the upstream's metadata is proxied and
the missing instances are queued. OHIF asks for a series' metadata before any of its
frames, so the whole series is usually filled before the frames are asked for.

When the upstream cannot be asked (down, too slow), whatever the bucket holds is served
(a PACS outage should not blank cached studies); with nothing in the bucket, the
upstream's failure is the answer (502/504).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from framecdn.errors import UpstreamError
from framecdn.framestore.keys import InstanceKey
from framecdn.origin.cache import TTLCache
from framecdn.origin.scope import ReadScope

if TYPE_CHECKING:
    from framecdn.origin.app import Origin
    from framecdn.origin.proxy import UpstreamProxy

log = logging.getLogger("framecdn.origin")


class ReadThrough:
    """Decides, per request, whether the bucket's answer stands or the upstream's is needed."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        settings = origin.settings
        self.complete: TTLCache[str, bool] = TTLCache(
            settings.metadata_listing_entries, settings.metadata_listing_seconds
        )

    def proxy_for(self, scope: ReadScope, study: str) -> UpstreamProxy | None:
        """The upstream, if this request may read through to it. What it fills goes under
        the scope's first layout (with access control: the upstream's own site)."""
        upstream = self.origin.upstream
        if upstream is None or not scope.upstream or not scope.allows(study):
            return None
        if not scope.layouts:
            return None
        return upstream

    async def instance(
        self, request: Request, scope: ReadScope, key: InstanceKey, route: str, not_found: str
    ) -> Response | None:
        """The upstream's answer for an instance the bucket lacks; None when there is no
        upstream to ask. The fill is queued once a successful answer has been passed on
        (the viewer's first frame does not share the upstream with the copy of its
        instance), and also when the upstream refuses only this representation (Orthanc
        1.10's DICOMweb answers 400 to a single-part frame): the instance is still wanted.
        One the upstream says it does not have (404, 410) is not queued."""
        upstream = self.proxy_for(scope, key.study)
        if upstream is None:
            return None

        def queue_fill() -> None:
            self.origin.fills.ask([key], scope.layouts[0])

        def queue_unless_missing(status: int) -> None:
            if status not in (404, 410):
                queue_fill()

        return await upstream.forward(
            request, route=route, not_found=not_found, on_success=queue_fill,
            on_refused=queue_unless_missing,
        )

    async def listing(
        self,
        request: Request,
        scope: ReadScope,
        study: str,
        series: str | None,
        held: frozenset[str],
        level_key: str,
        route: str,
    ) -> Response | None:
        """None when the bucket's answer (holding the SOP Instance UIDs ``held``) is
        complete or the upstream cannot tell; else the upstream's answer."""
        upstream = self.proxy_for(scope, study)
        if upstream is None or self.complete.get(level_key):
            return None
        try:
            listed = await upstream.instances(study, series)
        except UpstreamError as exc:
            upstream.count(route, exc.kind)
            if held:
                log.warning("%s: upstream not asked (%s); serving the bucket's %d instance(s)",
                            request.url.path, exc, len(held))
                return None
            return upstream.failure(request, exc, route)
        if listed is None:  # the upstream has none: the bucket's answer is all there is
            return None
        missing = [key for key in listed if key.instance not in held]
        if not missing:
            self.complete.put(level_key, True)
            return None
        self.origin.fills.ask(missing, scope.layouts[0])
        return await upstream.forward(request, route=route, not_found="not found")
