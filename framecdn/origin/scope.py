"""Where one request may read: the key layouts (sites) and the studies its caller may open.

Every handler that reads the bucket or the upstream asks :func:`read_scope` first and
looks only there. Without access control the scope is the origin's own prefix and
every study in it (:attr:`Origin.default_scope`); an authentication middleware
narrows it per request by putting a :class:`ReadScope` into the ASGI scope under
:data:`SCOPE_KEY`. A study outside the scope must answer exactly like a study that
does not exist, so handlers treat "not allowed" and "not found" the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from framecdn.framestore.keys import KeyLayout

if TYPE_CHECKING:
    from framecdn.origin.app import Origin

#: The ASGI scope key an authentication middleware sets for the request.
SCOPE_KEY = "framecdn.read_scope"


@dataclass(frozen=True, slots=True)
class ReadScope:
    """The layouts a request may read, in lookup order, and (optionally) its studies."""

    layouts: tuple[KeyLayout, ...]
    #: None: every study under those layouts; else only these Study Instance UIDs.
    studies: frozenset[str] | None = None
    #: Whether requests in this scope may be answered from (or proxied to) the upstream.
    upstream: bool = True

    def allows(self, study: str) -> bool:
        return self.studies is None or study in self.studies

    def layouts_for(self, study: str) -> tuple[KeyLayout, ...]:
        """Where ``study`` may be looked for: nowhere when it is out of scope."""
        return self.layouts if self.allows(study) else ()


def read_scope(request: Request) -> ReadScope:
    """The request's scope: what the auth middleware set, else the origin's default."""
    scope = request.scope.get(SCOPE_KEY)
    if scope is not None:
        return scope  # type: ignore[no-any-return]
    origin: Origin = request.app.state.origin
    return origin.default_scope
