"""Access control: who asks (bearer JWT or API key), what they may read, and caching that
respects it. docs/security.md says what this promises and which tests prove it.

:class:`AccessMiddleware` wraps the whole app, so every route but the few in
:data:`EXEMPT_PATHS` (health, metrics, nginx's authorize call) is covered, including
routes added later. For each request it

* removes ``access_token`` from the query string before anything else sees it (the
  access log, handlers building Content-Location or BulkDataURI, a cache key);
* with ``FRAMECDN_AUTH`` on: turns the credential into an :class:`Identity` and its
  :class:`ReadScope` (put into the ASGI scope under ``SCOPE_KEY``; the handlers look
  only there), or answers 401 (RFC 6750 ``WWW-Authenticate``) / 403 (no site here);
* applies the per-caller rate limit (429 + ``Retry-After``);
* makes every answer ``Cache-Control: private``, except for the shipped nginx (it sends
  ``X-Framecdn-Cache: <FRAMECDN_CACHE_SECRET>``), which additionally gets
  ``X-Accel-Expires`` so it may keep the answer -- it asks :func:`authorize_endpoint`
  before serving anything from its cache, and keys its cache on the scope partition;
* writes the caller's site, subject and the decision into the access-log labels; a
  study the caller may not read is logged ``denied`` with :data:`OUT_OF_SCOPE` whether a
  ``studies`` claim leaves it out or it belongs to another site (found on the 404, by
  asking the other sites' prefixes for one key; a study that exists nowhere costs the
  same look), so an auditor tells probing of another clinic from a typo.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from typing import Any
from urllib.parse import unquote, unquote_plus

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framecdn.errors import Refusal, StoreError
from framecdn.framestore.config import Settings
from framecdn.framestore.keys import is_valid_uid
from framecdn.origin.apikeys import ApiKeysFile
from framecdn.origin.errors import error_response
from framecdn.origin.metrics import label
from framecdn.origin.ratelimit import RateLimiter
from framecdn.origin.scope import SCOPE_KEY, Identity, ReadScope, Sites
from framecdn.origin.storage import ObjectStore
from framecdn.origin.tokens import InvalidToken, TokenVerifier

log = logging.getLogger("framecdn.origin")

#: nginx's ``auth_request`` target (answered only to the shipped nginx).
AUTHORIZE_PATH = "/_framecdn/authorize"
#: Paths answered to anyone: health checks, metrics (nginx lets only private networks
#: reach them), and the authorize call, which checks the credential it is handed itself.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", AUTHORIZE_PATH})
#: RFC 6750 §2.3: the credential in the URL, for viewers that cannot set a header.
QUERY_TOKEN = "access_token"  # noqa: S105 — the parameter name, not a secret
CACHE_HEADER = "x-framecdn-cache"
PARTITION_HEADER = "X-Framecdn-Partition"
_STUDY_IN_PATH = re.compile(r"/studies/([^/]+)")
_SPLIT = re.compile(r"[,\s]+")


class AuthFailure(Refusal):
    """The request is refused before any handler runs; ``reason`` goes to the log."""

    def __init__(self, status: int, error: str | None, reason: str) -> None:
        super().__init__(reason, status=status)
        self.error = error
        self.reason = reason


def strip_query_token(query: bytes) -> tuple[bytes, str | None]:
    """The query without ``access_token`` (every other parameter untouched), and its value."""
    kept: list[bytes] = []
    token = None
    for piece in query.split(b"&") if query else []:
        name, _, value = piece.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == QUERY_TOKEN:
            token = unquote_plus(value.decode("latin-1"))
            continue
        kept.append(piece)
    return b"&".join(kept), token


def bearer_token(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (other schemes are no credential here)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def study_of(path: str) -> str | None:
    """The Study Instance UID a DICOMweb path names, if any."""
    match = _STUDY_IN_PATH.search(path)
    return unquote(match[1]) if match else None


def privatise(cache_control: str) -> str:
    """The same caching rules for the caller's own browser only (``public`` -> ``private``)."""
    directives = [d.strip() for d in cache_control.split(",") if d.strip()]
    out = [
        "private" if d.lower() == "public" else d
        for d in directives
        if not d.lower().startswith("s-maxage")
    ]
    if not any(d.lower() in ("private", "no-store") for d in out):
        out.insert(0, "private")
    return ", ".join(out)


def shared_max_age(cache_control: str) -> int | None:
    """How long a shared cache may keep an answer (``s-maxage``, else ``max-age``)."""
    ages: dict[str, int] = {}
    for directive in cache_control.split(","):
        name, _, value = directive.strip().lower().partition("=")
        if name in ("max-age", "s-maxage") and value.strip().isdigit():
            ages[name] = int(value)
    if "private" in cache_control.lower() or "no-store" in cache_control.lower():
        return None
    return ages.get("s-maxage", ages.get("max-age"))


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name; dots reach into objects (``attributes.site``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _names(value: Any) -> list[str] | None:
    """A claim holding one name, a comma/space separated string, or a list of names."""
    if isinstance(value, str):
        return [v for v in _SPLIT.split(value) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    return None


def warn_if_open(settings: Settings) -> None:
    """Say loudly at start when anyone on the network reads every study."""
    if settings.auth:
        return
    host = settings.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning(
            "WARNING: authentication is OFF (FRAMECDN_AUTH) and the origin listens on %s: "
            "anyone who reaches it reads every study, patient names included "
            "(docs/security.md)",
            settings.host,
        )


class AccessControl:
    """The origin's access policy: credentials, sites, rate limits, the trusted cache."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth
        self.sites = Sites(settings)
        self.realm = settings.auth_realm
        self.query_token = settings.auth_query_token
        self.site_claim = settings.auth_site_claim
        self.studies_claim = settings.auth_studies_claim
        self.subject_claim = settings.auth_subject_claim
        self.cache_secret = settings.cache_secret
        self.verifier: TokenVerifier | None = None
        self.api_keys: ApiKeysFile | None = None
        if self.enabled:
            if settings.auth_jwt_secret or settings.auth_jwks_url or settings.auth_jwks_file:
                self.verifier = TokenVerifier(settings)
            if settings.auth_api_keys_file:
                self.api_keys = ApiKeysFile(settings.auth_api_keys_file)
        self.limiter = (
            RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit else None
        )

    def reload(self) -> None:
        """Read the API keys file again (SIGHUP); a bad file keeps the keys in use."""
        if self.api_keys is not None:
            self.api_keys.reload()

    async def aclose(self) -> None:
        if self.verifier is not None:
            await self.verifier.aclose()

    def from_cache(self, headers: Headers) -> bool:
        """True for the shipped nginx: it checks every cached answer with the origin."""
        if self.cache_secret is None:
            return False
        presented = headers.get(CACHE_HEADER, "").encode()
        return hmac.compare_digest(presented, self.cache_secret.encode())

    # Who asks -------------------------------------------------------------------------

    async def identify(self, credential: str | None) -> Identity:
        if credential is None:
            raise AuthFailure(401, None, "no credential")
        if credential.count(".") == 2 and self.verifier is not None:
            try:
                claims = await self.verifier.verify(credential)
            except InvalidToken as exc:
                raise AuthFailure(401, "invalid_token", f"token {exc}") from None
            return self._identity_from(claims)
        if self.api_keys is not None:
            key = self.api_keys.lookup(credential)
            if key is None:
                raise AuthFailure(401, "invalid_token", "unknown API key")
            return Identity(key.subject, key.sites, None, "api-key")
        raise AuthFailure(401, "invalid_token", "not a credential this origin takes")

    def _identity_from(self, claims: dict[str, Any]) -> Identity:
        subject = claim(claims, self.subject_claim) or claims.get("sub") or "-"
        sites = _names(claim(claims, self.site_claim)) or []
        raw_studies = claim(claims, self.studies_claim)
        studies = None
        if raw_studies is not None:
            listed = _names(raw_studies)
            if listed is None or not all(is_valid_uid(uid) for uid in listed):
                raise AuthFailure(401, "invalid_token", "studies claim is not a list of UIDs")
            studies = frozenset(listed)
        return Identity(str(subject), tuple(sites), studies, "jwt")

    def scope_for(self, identity: Identity) -> ReadScope:
        scope = self.sites.scope_for(identity)
        if scope is None:
            raise AuthFailure(403, "insufficient_scope", "names no site served here")
        return scope

    async def check(self, headers: Headers, query_token: str | None) -> tuple[Identity, ReadScope]:
        """The caller and what it may read, or :class:`AuthFailure`."""
        header_token = bearer_token(headers)
        if query_token is not None and not self.query_token:
            raise AuthFailure(400, "invalid_request", "credential in the URL refused")
        if header_token is not None and query_token is not None:
            raise AuthFailure(400, "invalid_request", "two credentials")
        identity = await self.identify(header_token or query_token)
        return identity, self.scope_for(identity)

    # Answers --------------------------------------------------------------------------

    def refusal(self, failure: AuthFailure) -> Response:
        """401/403/400 with RFC 6750's ``WWW-Authenticate``; never cached anywhere."""
        challenge = f'Bearer realm="{self.realm}"'
        if failure.error is not None:
            challenge += f', error="{failure.error}"'
        messages = {
            401: "authentication required" if failure.error is None else "invalid credential",
            403: "the credential opens no site served here",
            400: "send one credential, in the Authorization header",
        }
        return error_response(
            failure.status,
            messages[failure.status],
            headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"},
        )

    def caller_key(self, scope: Scope, identity: Identity | None) -> str:
        if identity is not None:
            return f"{identity.method}:{identity.subject}"
        client = scope.get("client") or ("-", 0)
        return f"address:{client[0]}"


def too_many_requests(retry_after: int) -> Response:
    return error_response(
        429,
        "too many requests",
        headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"},
    )


#: The audit reason of every study the caller may not read, however its scope left it out.
OUT_OF_SCOPE = "study out of scope"


def _audit(labels: dict[str, Any], identity: Identity) -> None:
    labels.update(site=identity.site_label, subject=identity.subject, auth=identity.method)


class AccessMiddleware:
    """Authenticates, scopes, rate-limits and keeps answers private; see the module doc."""

    def __init__(self, app: ASGIApp, access: AccessControl, store: ObjectStore) -> None:
        self.app = app
        self.access = access
        self.store = store

    async def _elsewhere(self, study: str, read: ReadScope) -> bool:
        """Whether ``study`` is held under a site ``read`` does not reach."""
        for layout in self.access.sites.outside(read):
            if await self.store.any_key(layout.study_prefix(study)):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        access = self.access
        labels: dict[str, Any] = scope.setdefault("framecdn", {})
        scope["query_string"], query_token = strip_query_token(scope.get("query_string", b""))
        headers = Headers(scope=scope)
        from_cache = access.from_cache(headers)
        identity: Identity | None = None
        study = study_of(scope["path"])
        read: ReadScope | None = None
        if access.enabled:
            try:
                identity, read = await access.check(headers, query_token)
            except AuthFailure as failure:
                labels.update(decision="denied", reason=failure.reason)
                await access.refusal(failure)(scope, receive, send)
                return
            _audit(labels, identity)
            labels["decision"] = "allowed"
            scope[SCOPE_KEY] = read
            if study is not None and not read.allows(study):
                labels.update(decision="denied", reason=OUT_OF_SCOPE)
        if access.limiter is not None and not from_cache:  # nginx limits its own clients
            wait = access.limiter.take(access.caller_key(scope, identity))
            if wait:
                labels.update(decision="denied", reason="rate limited")
                await too_many_requests(wait)(scope, receive, send)
                return
        if not access.enabled:
            await self.app(scope, receive, send)
            return

        async def send_private(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 404 and study is not None and read is not None:
                    await self._audit_missing(labels, study, read)
                _keep_private(message, from_cache)
            await send(message)

        await self.app(scope, receive, send_private)


    async def _audit_missing(self, labels: dict[str, Any], study: str, read: ReadScope) -> None:
        """A 404 for a study of another site is logged as out of scope, not allowed."""
        if labels.get("decision") != "allowed":
            return
        try:
            elsewhere = await self._elsewhere(study, read)
        except (StoreError, TimeoutError) as exc:
            labels["reason"] = f"scope not checked: {type(exc).__name__}"
            return
        if elsewhere:
            labels.update(decision="denied", reason=OUT_OF_SCOPE)


def _keep_private(message: Message, for_shared_cache: bool) -> None:
    """``private`` for the client; the trusted nginx alone learns how long it may keep it.

    An error answer is ``no-store`` for everyone: a 404 or 406 says something about one
    caller's scope, and caches that keep 4xx (heuristically, or a CDN's default) must not
    hand it to another."""
    headers = MutableHeaders(scope=message)
    if message["status"] >= 400:
        headers["Cache-Control"] = "no-store"
        return
    cache_control = headers.get("cache-control")
    if cache_control is None:
        headers["Cache-Control"] = "private"
        return
    age = shared_max_age(cache_control) if for_shared_cache else None
    headers["Cache-Control"] = privatise(cache_control)
    if age and "x-accel-redirect" not in headers:
        # First in the list: nginx < 1.23 obeys X-Accel-Expires over a *later* Cache-Control.
        message["headers"].insert(0, (b"x-accel-expires", str(age).encode()))


async def authorize_endpoint(request: Request) -> Response:
    """nginx's ``auth_request``: may the original request be answered, and from which
    cache partition? 204 + ``X-Framecdn-Partition`` (``none``: out of scope, which nginx
    then asks the origin about, so it answers exactly like a missing study), or the 401 /
    403 the origin itself would give. Only the shipped nginx is answered."""
    access: AccessControl = request.app.state.origin.access
    labels: dict[str, Any] = request.scope.setdefault("framecdn", {})
    label(request.scope, route="authorize", mode="-")
    if not access.from_cache(request.headers):
        return error_response(404, "not found")
    uri = request.headers.get("x-original-uri", "")
    path, _, query = uri.partition("?")
    _, query_token = strip_query_token(query.encode("latin-1"))
    labels["path"] = path
    edge_id = request.headers.get("x-framecdn-request-id")
    if edge_id:
        labels["edge_request_id"] = edge_id[:64]
    if request.headers.get("x-original-method", "GET").upper() == "OPTIONS" or not (
        access.enabled
    ):
        return Response(status_code=204, headers={PARTITION_HEADER: "open"})
    try:
        identity, read = await access.check(request.headers, query_token)
    except AuthFailure as failure:
        labels.update(decision="denied", reason=failure.reason)
        return access.refusal(failure)
    _audit(labels, identity)
    labels["decision"] = "allowed"
    study = study_of(path)
    if study is not None and not read.allows(study):
        labels.update(decision="denied", reason=OUT_OF_SCOPE)
    return Response(status_code=204, headers={PARTITION_HEADER: read.partition(study)})
