"""The fill protocol: how an origin asks the fill service for missing instances.

Both ends use this module and nothing else for it: the origin builds the request with
:func:`fill_url` and :meth:`FillRequest.to_json` (``origin/fill_requests.py``), the
fill service reads it with :meth:`FillRequest.from_json` (``ingest/fill_service.py``)::

    POST {FRAMECDN_FILL_URL}/fills
    {"prefix": "clinic-a", "instances": [[study, series, sop], ...]}

``prefix`` may be absent (the service's own ``FRAMECDN_PREFIX``). The service answers
:data:`ACCEPTED` with ``{"queued": n, "duplicates": n, "refused": n}``, or 400 with the
line :class:`InvalidFillRequest` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from framecdn.errors import Refusal
from framecdn.framestore.keys import InstanceKey, InvalidUID

#: The path of the fill service's queue (below ``FRAMECDN_FILL_URL``).
FILLS_PATH = "/fills"
#: The status of a request the service took (whether or not every instance was queued).
ACCEPTED = 202
#: The largest request body the service reads.
MAX_REQUEST_BYTES = 1 << 20


class InvalidFillRequest(Refusal, ValueError):
    """A ``POST /fills`` body that does not follow the protocol (answered 400)."""


def fill_url(service_url: str) -> str:
    """Where requests go, from the service's URL (``FRAMECDN_FILL_URL``)."""
    return service_url.rstrip("/") + FILLS_PATH


@dataclass(frozen=True, slots=True)
class FillRequest:
    """Instances to bring into the bucket under ``prefix`` (None: the service's own)."""

    instances: tuple[InstanceKey, ...]
    prefix: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "instances": [[k.study, k.series, k.instance] for k in self.instances]
        }
        if self.prefix is not None:
            body["prefix"] = self.prefix
        return body

    @classmethod
    def from_json(cls, body: bytes) -> FillRequest:
        """The request a body holds; :class:`InvalidFillRequest` says what is wrong."""
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise TypeError("the body is not an object")
            entries = data["instances"]
            prefix = data.get("prefix")
            if not isinstance(entries, list):
                raise TypeError("instances is not a list")
            if prefix is not None and not isinstance(prefix, str):
                raise TypeError("prefix is not a string")
            return cls(tuple(InstanceKey(*map(str, entry)) for entry in entries), prefix)
        except InvalidUID as exc:
            raise InvalidFillRequest(str(exc)) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidFillRequest(
                f'expected {{"instances": [[study, series, sop], ...]}} ({exc})'
            ) from None
