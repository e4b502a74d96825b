"""Where one request may read: the key layouts (sites) and the studies its caller may open.

Every handler that reads the bucket or the upstream asks :func:`read_scope` first and
looks only there. Without access control the scope is the origin's own prefix and
every study in it (:attr:`Origin.default_scope`); an authentication middleware
narrows it per request by putting a :class:`ReadScope` into the ASGI scope under
:data:`SCOPE_KEY`. A study outside the scope must answer exactly like a study that
does not exist, so handlers treat "not allowed" and "not found" the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from framecdn.framestore.config import Settings
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


    def partition(self, study: str | None) -> str:
        """A short name for "what this scope reads of ``study``" (of everything: None).

        Two requests with the same partition get the same answer for the same URL, so a
        shared cache may key on it; "none" means the study is out of scope.
        """
        layouts = self.layouts if study is None else self.layouts_for(study)
        if not layouts:
            return "none"
        studies = "*"
        if study is None and self.studies is not None:  # a search: what it may list
            studies = ",".join(sorted(self.studies))
        text = "|".join(layout.prefix for layout in layouts) + f"#{studies}#{self.upstream}"
        return hashlib.sha256(text.encode()).hexdigest()[:20]


#: The site claim value (or API key site) meaning "every configured site".
ALL_SITES = "*"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who asks, as their credential says: what the scope is made of and the audit logs."""

    subject: str
    #: Site names the credential names (``("*",)``: all of them).
    sites: tuple[str, ...]
    #: None: every study of those sites; else only these Study Instance UIDs.
    studies: frozenset[str] | None = None
    #: How the caller proved it: ``jwt`` or ``api-key``.
    method: str = "jwt"

    @property
    def site_label(self) -> str:
        return ",".join(self.sites) or "-"


class Sites:
    """The sites (clinics sharing the bucket) this origin serves, each a prefix of its own.

    A site ``name`` reads ``{FRAMECDN_PREFIX}{subprefix}`` (``name/`` unless configured
    as ``name=subprefix``). With no sites configured there is one, the origin's prefix,
    and every valid credential reads it. The sites must be configured: a bucket listing
    is not a registry, and a token must never reach a prefix nobody meant to serve.
    """

    def __init__(self, settings: Settings) -> None:
        self.layouts: dict[str, KeyLayout] = {
            site.name: KeyLayout(site.prefix_under(settings.prefix)) for site in settings.sites
        }
        self.own = KeyLayout(settings.prefix)
        self.upstream_site = settings.auth_upstream_site

    @property
    def single(self) -> bool:
        return not self.layouts

    def outside(self, read: ReadScope) -> tuple[KeyLayout, ...]:
        """The sites served here that ``read`` does not reach (none with a single site)."""
        return tuple(layout for layout in self.layouts.values() if layout not in read.layouts)

    def scope_for(self, identity: Identity) -> ReadScope | None:
        """What ``identity`` may read; None when it names no site served here."""
        if self.single:
            return ReadScope((self.own,), identity.studies, upstream=True)
        if ALL_SITES in identity.sites:
            names = list(self.layouts)
        else:
            names = [name for name in self.layouts if name in identity.sites]
        if not names:
            return None
        upstream = self.upstream_site in names
        if upstream:  # a fill lands under the first layout: the upstream's own site
            names.remove(self.upstream_site)  # type: ignore[arg-type]
            names.insert(0, self.upstream_site)  # type: ignore[arg-type]
        layouts = tuple(self.layouts[name] for name in names)
        return ReadScope(layouts, identity.studies, upstream)


def read_scope(request: Request) -> ReadScope:
    """The request's scope: what the auth middleware set, else the origin's default."""
    scope = request.scope.get(SCOPE_KEY)
    if scope is not None:
        return scope  # type: ignore[no-any-return]
    origin: Origin = request.app.state.origin
    return origin.default_scope
