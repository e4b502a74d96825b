"""All of framecdn's configuration, in one place.

Every setting is one field of a section (:class:`StorageSettings`, :class:`OriginSettings`,
... ; :class:`Settings` is all of them), declared with :func:`setting`::

    port: int = setting("FRAMECDN_PORT", 8080, "Origin port.", check=between(1, 65535))

That line is the whole truth about the setting: its environment variable, its
default, what it means and which values are allowed. Everything else is derived
from it: :meth:`Settings.from_env` reads the variables, :func:`environment_table`
renders the README's table and :func:`describe` the CLI's help, both appending the
field's default -- so a description never states the default itself.

To add a setting, add such a field (to the section it belongs to) and regenerate the
README table. ``documented=False`` keeps a variable out of the README and ``--help``
until something reads it; ``secret=True`` keeps a value out of ``repr()``.

Values are checked whenever a :class:`Settings` is built (from the environment, from
flags or in code): a bad one raises :class:`~framecdn.errors.ConfigError` naming the
variable. Nothing is silently clamped. Booleans are ``1/true/yes/on`` or
``0/false/no/off``; lists are comma-separated; an empty variable counts as unset.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import typing
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from framecdn.errors import ConfigError
from framecdn.framestore.keys import normalize_prefix

T = TypeVar("T")

#: A check returns None when the value is acceptable, else what is wrong with it.
Check = Callable[[Any], str | None]

DELIVERY_MODES = ("stream", "redirect", "accel")
#: Which changes start a follower's ingest. ``NewInstance`` takes each instance as soon as
#: Orthanc has stored it; ``StableSeries`` waits until Orthanc considers the series complete
#: (no new instance for its ``StableAge``) and then takes all its instances.
FOLLOW_TRIGGERS = ("NewInstance", "StableSeries")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
#: Today's S3 rules are stricter (3-63, lower case), but older AWS buckets may hold
#: capitals and underscores; anything outside this set cannot be a bucket anywhere.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_MAX_PRESIGN_WINDOW = 7 * 24 * 3600 // 2  # a URL lives two windows; SigV4 allows 7 days
_HOST_LABEL = re.compile(r"[\w-]+")
#: The userinfo of a URL (``scheme://user:password@``), even of a URL that is malformed.
_USERINFO = re.compile(r"://[^/?#\s]*@")


def setting(
    env: str,
    default: T,
    help: str,
    *,
    check: Check | None = None,
    documented: bool = True,
    secret: bool = False,
) -> T:
    """A :class:`Settings` field read from ``env``, described by ``help`` (no default in it)."""
    metadata = {"env": env, "help": help, "check": check, "documented": documented}
    return field(default=default, repr=not secret, metadata=metadata)


# Checks ------------------------------------------------------------------------------


def at_least(minimum: float) -> Check:
    return lambda value: None if value >= minimum else f"must be at least {minimum}"


def between(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def http_url(value: str | None) -> str | None:
    """``http(s)://host[:port][/path]``, strictly; None (unset) passes.

    Strict because Python's ``urlsplit`` quietly drops leading spaces, tabs and
    newlines that httpx and aiohttp then refuse (or retry forever on): what passes
    here is what every client framecdn uses will accept.
    """
    if value is None:
        return None
    odd = next((c for c in value if c.isspace() or unicodedata.category(c)[0] == "C"), None)
    if odd is not None:
        return f"must not contain spaces or control characters (it has {odd!r})"
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unclosed [IPv6] literal
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http:// or https:// URL with a host"
    if not _valid_host(parts.hostname or ""):
        return "has no valid host name or address"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None and parts.netloc.endswith(":"):
        port = 0
    if port is not None and not 1 <= port <= 65535:
        return "has a port that is not a number from 1 to 65535"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _valid_host(host: str) -> bool:
    """A DNS name (letters of any script, digits, ``-``, ``_``, dots) or an IP address."""
    if ":" in host:  # only an IPv6 literal (``[::1]``) keeps a colon in ``hostname``
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return False
        return True
    return bool(host) and all(label and _HOST_LABEL.fullmatch(label) for label in (
        host[:-1] if host.endswith(".") else host
    ).split("."))


def redact_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``.

    Messages show the values they refuse; a URL's userinfo is a secret wherever it is.
    """
    return _USERINFO.sub("://***@", text)


def url_path(value: str) -> str | None:
    """An absolute URL path (``/x``) or empty."""
    return None if value == "" or value.startswith("/") else "must be empty or start with /"


def cors_origins(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if v != "*" and http_url(v) is not None]
    return f"has entries that are neither * nor http(s) origins: {', '.join(bad)}" if bad else None


def bucket_name(value: str) -> str | None:
    if _BUCKET_NAME.fullmatch(value):
        return None
    return "is not a bucket name (letters, digits, dots, hyphens, underscores; 3 or more)"


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def ae_title(value: str) -> str | None:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash, not only spaces."""
    if not value.strip():
        return "must not be empty"
    if len(value) > 16 or not all(" " <= c <= "~" and c != "\\" for c in value):
        return "is not 1-16 printable ASCII characters without a backslash"
    return None


def calling_ae_list(values: tuple[str, ...]) -> str | None:
    """``AE`` or ``AE=site`` entries, each AE title once."""
    titles = []
    for entry in values:
        title, _, _site = (part.strip() for part in entry.partition("="))
        problem = ae_title(title)
        if problem:
            return f"has an AE title that {problem}: {entry!r}"
        titles.append(title)
    if len(set(titles)) != len(titles):
        return "names an AE title twice"
    return None


def shard(value: str) -> str | None:
    """``K/N`` with 0 <= K < N."""
    match = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if match is None or not int(match[1]) < int(match[2]):
        return "is not a shard: K/N where K must be 0..N-1 (0-based), e.g. 0/2 and 1/2"
    return None


@dataclass(frozen=True, slots=True)
class Site:
    """One clinic an origin serves: its name, and its key prefix below ``FRAMECDN_PREFIX``."""

    name: str
    subprefix: str

    @classmethod
    def parse(cls, entry: str) -> Site:
        """``name`` or ``name=subprefix`` (the subprefix defaults to the name)."""
        name, _, sub = (part.strip() for part in entry.partition("="))
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
            raise ValueError(f"has a site name that is not letters, digits, '.', '_', '-': "
                             f"{entry!r}")
        if sub and not re.fullmatch(r"[A-Za-z0-9._\-/]+", sub):
            raise ValueError(f"has a site prefix that is not key-safe: {entry!r}")
        return cls(name, sub or name)

    def prefix_under(self, base: str) -> str:
        """This site's key prefix: ``FRAMECDN_PREFIX`` (``base``) then its subprefix."""
        return normalize_prefix(base) + normalize_prefix(self.subprefix)


def site_list(values: tuple[str, ...]) -> str | None:
    """``name`` or ``name=subprefix`` entries with distinct, key-safe names."""
    try:
        names = [Site.parse(entry).name for entry in values]
    except ValueError as exc:
        return str(exc)
    if len(set(names)) != len(names):
        return "names a site twice"
    return None


#: With auth on, a redirect's presigned URL lives at most two windows: keep it short.
MAX_AUTH_PRESIGN_WINDOW = 300


# Settings ----------------------------------------------------------------------------


class Section:
    """A group of settings one kind of component uses: it takes its section, not the lot.

    :class:`Settings` is every section at once (it inherits them all), so a component
    typed to take ``StorageSettings`` is handed the process's settings and can read
    only that section's fields (mypy holds it to that). Its values are checked when
    it is built.
    """

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            _check_field(f, getattr(self, f.name), f.metadata["env"])


@dataclass(frozen=True)
class StorageSettings(Section):
    """Where the bucket is and how framecdn reaches it (every command uses these)."""

    s3_endpoint: str | None = setting(
        "FRAMECDN_S3_ENDPOINT", None,
        "Internal S3 URL (`http(s)://host[:port]`); unset means AWS S3 in `AWS_REGION`.",
        check=http_url,
    )
    s3_public_endpoint: str | None = setting(
        "FRAMECDN_S3_PUBLIC_ENDPOINT", None,
        "S3 URL clients reach, used to sign redirects; unset means the internal endpoint.",
        check=http_url,
    )
    bucket: str = setting(
        "FRAMECDN_BUCKET", "framecdn", "Bucket holding the frames.", check=bucket_name
    )
    prefix: str = setting("FRAMECDN_PREFIX", "", "Key prefix, e.g. one per clinic.")
    aws_access_key_id: str | None = setting(
        "AWS_ACCESS_KEY_ID", None,
        "S3 access key; unset means boto3's credential chain (profile, instance role).",
    )
    aws_secret_access_key: str | None = setting(
        "AWS_SECRET_ACCESS_KEY", None, "S3 secret key (with `AWS_ACCESS_KEY_ID`).", secret=True
    )
    aws_region: str = setting(
        "AWS_REGION", "us-east-1", "S3 region, also the signing region.", check=non_empty
    )
    presign_window_seconds: int = setting(
        "FRAMECDN_PRESIGN_WINDOW", 3600,
        "Redirect and accel URLs are signed per window of this many seconds (stable within "
        "one, valid for two).",
        check=between(1, _MAX_PRESIGN_WINDOW),
    )
    s3_max_connections: int = setting(
        "FRAMECDN_S3_MAX_CONNECTIONS", 64, "S3 connection pool size per process.",
        check=at_least(1),
    )
    s3_connect_timeout: float = setting(
        "FRAMECDN_S3_CONNECT_TIMEOUT", 3.0,
        "Seconds to connect to S3 (or wait for a free connection) before answering 503.",
        check=positive,
    )
    s3_read_timeout: float = setting(
        "FRAMECDN_S3_READ_TIMEOUT", 15.0,
        "Seconds to wait for S3's answer, and then for each piece of a body, before 504.",
        check=positive,
    )
    s3_keepalive_seconds: float = setting(
        "FRAMECDN_S3_KEEPALIVE", 30.0, "Seconds an idle S3 connection stays in the pool.",
        check=positive,
    )

    @property
    def internal_endpoint(self) -> str:
        """The S3 URL the origin and ingest talk to (AWS S3 of the region when unset)."""
        endpoint = self.s3_endpoint or f"https://s3.{self.aws_region}.amazonaws.com"
        return endpoint.rstrip("/")

    @property
    def public_endpoint(self) -> str:
        """The S3 URL clients reach (presigned redirects are signed for this host)."""
        return (self.s3_public_endpoint or self.internal_endpoint).rstrip("/")


@dataclass(frozen=True)
class OriginSettings(Section):
    """The origin's HTTP server and how it answers (``framecdn serve``)."""

    host: str = setting("FRAMECDN_HOST", "127.0.0.1", "Origin bind address.", check=non_empty)
    port: int = setting("FRAMECDN_PORT", 8080, "Origin port.", check=between(1, 65535))
    workers: int = setting("FRAMECDN_WORKERS", 1, "Origin worker processes.", check=at_least(1))
    access_log: str = setting(
        "FRAMECDN_ACCESS_LOG", "stdout",
        "Where the origin writes its access log, one JSON object a line and nothing else: "
        "`stdout`, `stderr`, `off` or a file path (appended, reopened after rotation). The "
        "other log lines go to stderr.", check=non_empty,
    )
    root_path: str = setting(
        "FRAMECDN_ROOT_PATH", "/dicom-web", "DICOMweb root path.", check=url_path
    )
    delivery: str = setting(
        "FRAMECDN_DELIVERY", "stream",
        "How single frames leave the origin: `stream`, `redirect` (307 to S3) or `accel` "
        "(nginx X-Accel-Redirect).",
        check=one_of(*DELIVERY_MODES),
    )
    cors_origins: tuple[str, ...] = setting(
        "FRAMECDN_CORS_ORIGINS", ("*",), "Comma-separated allowed origins.", check=cors_origins
    )
    frame_cache_control: str = setting(
        "FRAMECDN_FRAME_CACHE_CONTROL", "public, max-age=31536000, immutable",
        "Cache-Control of frames.",
    )
    metadata_cache_control: str = setting(
        "FRAMECDN_METADATA_CACHE_CONTROL", "public, max-age=300", "Cache-Control of metadata."
    )
    max_frames_per_request: int = setting(
        "FRAMECDN_MAX_FRAMES_PER_REQUEST", 256, "Most frames one request may list.",
        check=at_least(1),
    )
    accel_location: str = setting(
        "FRAMECDN_ACCEL_LOCATION", "/_framecdn_s3/", "nginx internal location for `accel`.",
        check=lambda v: url_path(v) if v else "must not be empty",
    )
    frame_prefetch: int = setting(
        "FRAMECDN_FRAME_PREFETCH", 4,
        "Frames of a list the origin fetches from S3 concurrently.", check=at_least(1),
    )
    stream_chunk_bytes: int = setting(
        "FRAMECDN_STREAM_CHUNK_BYTES", 262144, "Bytes the origin forwards per write.",
        check=between(64 * 1024, 16 * 1024 * 1024),
    )
    public_url: str | None = setting(
        "FRAMECDN_PUBLIC_URL", None,
        "Origin URL clients use (`https://host[:port]`), for BulkDataURI and "
        "Content-Location; unset means each request's Host.",
        check=http_url,
    )
    index_cache_seconds: float = setting(
        "FRAMECDN_INDEX_CACHE_SECONDS", 600.0,
        "Seconds the origin keeps an instance's index in memory.", check=at_least(0),
    )
    index_cache_entries: int = setting(
        "FRAMECDN_INDEX_CACHE_ENTRIES", 20000, "Instance indexes kept in memory.",
        check=at_least(1),
    )
    stale_index_seconds: float = setting(
        "FRAMECDN_STALE_INDEX_SECONDS", 86400.0,
        "Seconds the origin ignores the index of an instance found half evicted.",
        check=positive,
    )
    metadata_cache_seconds: float = setting(
        "FRAMECDN_METADATA_CACHE_SECONDS", 600.0,
        "Seconds the origin keeps an instance's DICOM JSON in memory.", check=at_least(0),
    )
    metadata_cache_entries: int = setting(
        "FRAMECDN_METADATA_CACHE_ENTRIES", 4096, "Instance DICOM JSON objects kept in memory.",
        check=at_least(1),
    )
    metadata_listing_seconds: float = setting(
        "FRAMECDN_METADATA_LISTING_SECONDS", 10.0,
        "Seconds a rendered series/study metadata answer is reused (new instances show up "
        "after at most this long).",
        check=at_least(0),
    )
    metadata_listing_entries: int = setting(
        "FRAMECDN_METADATA_LISTING_ENTRIES", 1024, "Rendered metadata answers kept in memory.",
        check=at_least(1),
    )
    metadata_fetch_concurrency: int = setting(
        "FRAMECDN_METADATA_FETCH_CONCURRENCY", 16,
        "Instance metadata objects one series/study request reads from S3 at once.",
        check=at_least(1),
    )
    internal_presign_seconds: int = setting(
        "FRAMECDN_INTERNAL_PRESIGN_WINDOW", 300,
        "Signing window of the origin's own S3 GET URLs (cached per key for one window).",
        check=between(1, _MAX_PRESIGN_WINDOW),
    )
    url_cache_entries: int = setting(
        "FRAMECDN_URL_CACHE_ENTRIES", 65536, "Signed internal URLs kept in memory.",
        check=at_least(1),
    )
    access_flush_seconds: float = setting(
        "FRAMECDN_ACCESS_FLUSH_SECONDS", 60.0,
        "How often the origin writes the access markers that are due.", check=positive,
    )
    access_marker_seconds: float = setting(
        "FRAMECDN_ACCESS_MARKER_SECONDS", 3600.0,
        "A study's access marker is rewritten at most once per this many seconds.",
        check=at_least(0),
    )
    retry_after_seconds: int = setting(
        "FRAMECDN_RETRY_AFTER", 5, "Retry-After of 502/503/504 answers.", check=at_least(1)
    )
    max_header_bytes: int = setting(
        "FRAMECDN_MAX_HEADER_BYTES", 65536,
        "Most bytes of one request's line and headers together; more is answered 431.",
        check=between(4096, 16 * 1024 * 1024),
    )
    max_headers: int = setting(
        "FRAMECDN_MAX_HEADERS", 100,
        "Most header fields in one request; more are answered 431.", check=between(8, 10000),
    )
    qido_cache_control: str = setting(
        "FRAMECDN_QIDO_CACHE_CONTROL", "private, max-age=10",
        "Cache-Control of QIDO-RS search answers (kept out of shared caches: they change as "
        "studies arrive, and with access control they differ per user).",
    )
    qido_study_cache_seconds: float = setting(
        "FRAMECDN_QIDO_STUDY_CACHE_SECONDS", 30.0,
        "Seconds a study's search record (built from the bucket) is reused by searches "
        "without an upstream.",
        check=at_least(0),
    )
    qido_max_results: int = setting(
        "FRAMECDN_QIDO_MAX_RESULTS", 1000,
        "Most matches one search answers from the bucket (more are announced in a Warning "
        "header).",
        check=at_least(1),
    )


@dataclass(frozen=True)
class AccessSettings(Section):
    """Access control: credentials, sites, rate limits (docs/security.md)."""

    auth: bool = setting(
        "FRAMECDN_AUTH", False,
        "Check a credential (bearer JWT or API key) on every DICOMweb request; off serves "
        "every study to anyone who reaches the origin.",
    )
    auth_sites: tuple[str, ...] = setting(
        "FRAMECDN_AUTH_SITES", (),
        "Comma-separated sites (clinics) this origin serves, `name` or `name=subprefix`; "
        "each reads `FRAMECDN_PREFIX` + subprefix (`name/` unless given). Empty: one site, "
        "`FRAMECDN_PREFIX` itself.",
        check=site_list,
    )
    auth_upstream_site: str | None = setting(
        "FRAMECDN_AUTH_UPSTREAM_SITE", None,
        "With auth on and several sites, the site the upstream PACS belongs to: only its "
        "callers (and all-site callers) reach the upstream; unset means none do. With one "
        "site, its callers do.",
    )
    auth_jwt_secret: str | None = setting(
        "FRAMECDN_AUTH_JWT_SECRET", None,
        "Shared secret of HS256 tokens (at least 32 bytes).",
        check=lambda v: None if len(v.encode()) >= 32 else "must be at least 32 bytes",
        secret=True,
    )
    auth_jwks_url: str | None = setting(
        "FRAMECDN_AUTH_JWKS_URL", None,
        "JWKS URL of the identity provider (RS256/ES256 tokens), e.g. Keycloak's "
        "`https://idp/realms/R/protocol/openid-connect/certs`.",
        check=http_url,
    )
    auth_jwks_file: str | None = setting(
        "FRAMECDN_AUTH_JWKS_FILE", None, "JWKS file (instead of, or besides, the URL)."
    )
    auth_issuer: str | None = setting(
        "FRAMECDN_AUTH_ISSUER", None, "Required `iss` of tokens, e.g. the Keycloak realm URL."
    )
    auth_audience: tuple[str, ...] = setting(
        "FRAMECDN_AUTH_AUDIENCE", (),
        "Comma-separated accepted `aud` values; a token must carry one of them.",
    )
    auth_authorized_parties: tuple[str, ...] = setting(
        "FRAMECDN_AUTH_AUTHORIZED_PARTIES", (),
        "Comma-separated accepted client ids (e.g. OHIF's): the token's `azp`, or without one "
        "its `client_id` (RFC 9068 access tokens); empty: not checked.",
    )
    auth_leeway_seconds: float = setting(
        "FRAMECDN_AUTH_LEEWAY", 30.0,
        "Seconds of clock skew allowed on `exp`, `nbf` and `iat`.", check=between(0, 300),
    )
    auth_site_claim: str = setting(
        "FRAMECDN_AUTH_SITE_CLAIM", "site",
        "Token claim naming the caller's site(s) (a name, a list, or `*` for all); dots "
        "reach into objects (`attributes.site`).",
        check=non_empty,
    )
    auth_studies_claim: str = setting(
        "FRAMECDN_AUTH_STUDIES_CLAIM", "studies",
        "Token claim listing the only Study Instance UIDs it opens (absent: all of its "
        "sites').",
        check=non_empty,
    )
    auth_subject_claim: str = setting(
        "FRAMECDN_AUTH_SUBJECT_CLAIM", "sub",
        "Token claim naming the caller in the audit log (Keycloak: `preferred_username`).",
        check=non_empty,
    )
    auth_api_keys_file: str | None = setting(
        "FRAMECDN_AUTH_API_KEYS_FILE", None,
        "File of API keys, one `sha256:<hex> site subject` line each (`framecdn api-key` "
        "makes one).",
    )
    auth_query_token: bool = setting(
        "FRAMECDN_AUTH_QUERY_TOKEN", True,
        "Also accept the credential as `?access_token=` (viewers that cannot set headers); "
        "it is removed before logging, caching and URL building.",
    )
    auth_realm: str = setting(
        "FRAMECDN_AUTH_REALM", "framecdn", "Realm named in `WWW-Authenticate`.",
        check=lambda v: None if re.fullmatch(r"[A-Za-z0-9 ._-]+", v) else "has odd characters",
    )
    auth_jwks_refresh_seconds: float = setting(
        "FRAMECDN_AUTH_JWKS_REFRESH_SECONDS", 30.0,
        "Least seconds between two JWKS fetches (a token with an unknown `kid` asks for one).",
        check=at_least(0),
    )
    auth_jwks_max_age_seconds: float = setting(
        "FRAMECDN_AUTH_JWKS_MAX_AGE_SECONDS", 3600.0,
        "Seconds fetched JWKS keys are used before they are fetched again.", check=positive,
    )
    cache_secret: str | None = setting(
        "FRAMECDN_CACHE_SECRET", None,
        "Shared secret the shipped nginx sends in `X-Framecdn-Cache` (its `NGINX_CACHE_SECRET`): "
        "it asks the origin before every answer from its cache, so with auth on only its "
        "requests get answers it may cache; unset: every answer is `private`.",
        check=lambda v: None if len(v) >= 16 else "must be at least 16 characters",
        secret=True,
    )
    rate_limit: float = setting(
        "FRAMECDN_RATE_LIMIT", 0.0,
        "Requests per second one caller (credential, or address without one) may make; "
        "0 is no limit.",
        check=at_least(0),
    )
    rate_burst: int = setting(
        "FRAMECDN_RATE_BURST", 200, "Requests a caller may make at once above the rate.",
        check=at_least(1),
    )

    @property
    def sites(self) -> tuple[Site, ...]:
        """``FRAMECDN_AUTH_SITES`` as values (checked when the settings were built)."""
        return tuple(Site.parse(entry) for entry in self.auth_sites)


@dataclass(frozen=True)
class UpstreamSettings(Section):
    """The DICOMweb PACS behind the origin, for read-through and searches."""

    upstream_url: str | None = setting(
        "FRAMECDN_UPSTREAM_URL", None,
        "DICOMweb root of the PACS behind framecdn (e.g. `http://orthanc:8042/dicom-web`): "
        "searches and everything the bucket lacks are proxied there, and missing instances "
        "are filled from it. Unset: the origin answers from the bucket alone.",
        check=http_url,
    )
    upstream_username: str | None = setting(
        "FRAMECDN_UPSTREAM_USERNAME", None, "User for HTTP basic authentication at the upstream."
    )
    upstream_password: str | None = setting(
        "FRAMECDN_UPSTREAM_PASSWORD", None, "Password of that upstream user.", secret=True
    )
    upstream_token: str | None = setting(
        "FRAMECDN_UPSTREAM_TOKEN", None,
        "Bearer token for the upstream (instead of a user and password).", secret=True,
    )
    upstream_credentials_file: str | None = setting(
        "FRAMECDN_UPSTREAM_CREDENTIALS_FILE", None,
        "File holding the upstream's credentials: one line `user:password` or `Bearer <token>` "
        "(instead of the variables above).",
    )
    upstream_forward_auth: bool = setting(
        "FRAMECDN_UPSTREAM_FORWARD_AUTH", False,
        "Pass the client's own `Authorization` and `Cookie` headers to the upstream (when the "
        "PACS authenticates each viewer user); otherwise they never leave the origin.",
    )
    upstream_connect_timeout: float = setting(
        "FRAMECDN_UPSTREAM_CONNECT_TIMEOUT", 5.0,
        "Seconds to connect to the upstream before answering 502.", check=positive,
    )
    upstream_read_timeout: float = setting(
        "FRAMECDN_UPSTREAM_READ_TIMEOUT", 60.0,
        "Seconds to wait for the upstream's answer, and then for each piece of a body, "
        "before 504.",
        check=positive,
    )
    upstream_max_connections: int = setting(
        "FRAMECDN_UPSTREAM_MAX_CONNECTIONS", 32,
        "Upstream connection pool size per origin process.", check=at_least(1),
    )


@dataclass(frozen=True)
class FillSettings(Section):
    """The read-through fill service (``framecdn fill``)."""

    fill_url: str | None = setting(
        "FRAMECDN_FILL_URL", None,
        "URL of the fill service (`framecdn fill`) the origin queues missing instances to; "
        "unset with an upstream: `framecdn serve` starts one on loopback.",
        check=http_url,
    )
    fill_host: str = setting(
        "FRAMECDN_FILL_HOST", "127.0.0.1", "Bind address of `framecdn fill`.", check=non_empty
    )
    fill_port: int = setting(
        "FRAMECDN_FILL_PORT", 8091, "Port of `framecdn fill`.", check=between(1, 65535)
    )
    fill_concurrency: int = setting(
        "FRAMECDN_FILL_CONCURRENCY", 2,
        "Instances the fill service downloads and ingests at once.", check=at_least(1),
    )
    fill_queue_size: int = setting(
        "FRAMECDN_FILL_QUEUE_SIZE", 10000,
        "Instances waiting for a fill at most; more are refused (and asked again later).",
        check=at_least(1),
    )
    fill_nice: int = setting(
        "FRAMECDN_FILL_NICE", 10,
        "Scheduling niceness of the fill service (0-19): fills yield the CPU to the origin.",
        check=between(0, 19),
    )


@dataclass(frozen=True)
class RenderSettings(Section):
    """Thumbnails and rendered frames (needs the render extra)."""

    render_workers: int = setting(
        "FRAMECDN_RENDER_WORKERS", 2,
        "Worker processes (per origin worker) that render thumbnails and rendered frames.",
        check=at_least(1),
    )
    render_queue: int = setting(
        "FRAMECDN_RENDER_QUEUE", 32,
        "Renderings that may wait for a worker; beyond that a rendered request answers 503.",
        check=at_least(0),
    )
    render_jpeg_quality: int = setting(
        "FRAMECDN_RENDER_JPEG_QUALITY", 90,
        "JPEG quality of rendered images when the request names none.", check=between(1, 100),
    )
    thumbnail_size: int = setting(
        "FRAMECDN_THUMBNAIL_SIZE", 256,
        "Thumbnails fit in a square of this many pixels (unless `viewport` says otherwise).",
        check=between(16, 1024),
    )
    render_max_side: int = setting(
        "FRAMECDN_RENDER_MAX_SIDE", 8192, "Largest viewport width or height a request may ask.",
        check=between(16, 65535),
    )
    render_memory_entries: int = setting(
        "FRAMECDN_RENDER_MEMORY_ENTRIES", 32,
        "Recently answered rendered images kept in memory (besides the copy in the bucket).",
        check=at_least(1),
    )


@dataclass(frozen=True)
class IngestSettings(Section):
    """Splitting instances into the bucket (``framecdn ingest`` and every filler)."""

    ingest_workers: int = setting(
        "FRAMECDN_INGEST_WORKERS", 8, "Parallel uploads during ingest.", check=at_least(1)
    )
    ingest_memory_mb: int = setting(
        "FRAMECDN_INGEST_MEMORY_MB", 64,
        "Frame bytes (MiB) ingest holds in memory at once; a larger frame is uploaded in "
        "parts (S3 multipart, at least 5 MiB each), never held whole.",
        check=at_least(1),
    )
    ingest_max_inflate_ratio: int = setting(
        "FRAMECDN_INGEST_MAX_INFLATE_RATIO", 200,
        "A deflated file may inflate at most this many times its size, past its first 16 MB.",
        check=at_least(1),
    )
    ingest_max_inflated_mb: int = setting(
        "FRAMECDN_INGEST_MAX_INFLATED_MB", 4096,
        "A deflated file may inflate to at most this many MB (spooled to disk).",
        check=at_least(1),
    )


@dataclass(frozen=True)
class FollowSettings(Section):
    """The Orthanc follower (``framecdn follow-orthanc``)."""

    orthanc_url: str | None = setting(
        "FRAMECDN_ORTHANC_URL", None,
        "Orthanc REST root the follower reads, e.g. `http://orthanc:8042`.", check=http_url,
    )
    orthanc_username: str | None = setting(
        "FRAMECDN_ORTHANC_USERNAME", None, "Orthanc user of the follower."
    )
    orthanc_password: str | None = setting(
        "FRAMECDN_ORTHANC_PASSWORD", None, "Password of that Orthanc user.", secret=True
    )
    orthanc_credentials_file: str | None = setting(
        "FRAMECDN_ORTHANC_CREDENTIALS_FILE", None,
        "File holding `user:password` for Orthanc (instead of the two variables above).",
    )
    orthanc_timeout: float = setting(
        "FRAMECDN_ORTHANC_TIMEOUT", 60.0,
        "Seconds the follower waits for Orthanc to connect or send data.", check=positive,
    )
    follow_trigger: str = setting(
        "FRAMECDN_FOLLOW_TRIGGER", "NewInstance",
        "`NewInstance` (ingest each instance as it arrives) or `StableSeries` (whole series "
        "once Orthanc considers them complete).",
        check=one_of(*FOLLOW_TRIGGERS),
    )
    follow_concurrency: int = setting(
        "FRAMECDN_FOLLOW_CONCURRENCY", 2,
        "Instances the follower downloads and ingests at once.", check=at_least(1),
    )
    follow_poll_seconds: float = setting(
        "FRAMECDN_FOLLOW_POLL_SECONDS", 2.0,
        "Seconds between polls of Orthanc's change feed when it has nothing new.",
        check=positive,
    )
    follow_retry_seconds: float = setting(
        "FRAMECDN_FOLLOW_RETRY_SECONDS", 1.0,
        "First retry delay after a failure; doubles each time.", check=positive,
    )
    follow_retry_max_seconds: float = setting(
        "FRAMECDN_FOLLOW_RETRY_MAX_SECONDS", 60.0, "Longest retry delay.", check=positive
    )
    follow_max_attempts: int = setting(
        "FRAMECDN_FOLLOW_MAX_ATTEMPTS", 5,
        "Attempts before an instance that fails to ingest (with Orthanc and S3 healthy) is "
        "reported and passed over; with `--once`, also failures of Orthanc or S3 in a row "
        "before the run gives up (exit status 1).",
        check=at_least(1),
    )
    follow_modalities: tuple[str, ...] = setting(
        "FRAMECDN_FOLLOW_MODALITIES", (),
        "Comma-separated modalities to follow, e.g. `MG`; empty means all.",
    )
    follow_sop_classes: tuple[str, ...] = setting(
        "FRAMECDN_FOLLOW_SOP_CLASSES", (),
        "Comma-separated SOP Class UIDs to follow; empty means all.",
    )
    follow_min_frames: int = setting(
        "FRAMECDN_FOLLOW_MIN_FRAMES", 1,
        "Follow only instances with at least this many frames.", check=at_least(0),
    )
    follow_shard: str = setting(
        "FRAMECDN_FOLLOW_SHARD", "0/1",
        "`K/N`: this follower takes the instances whose SOP Instance UID hashes to K "
        "(0-based) of N.",
        check=shard,
    )
    follow_feed_id: str | None = setting(
        "FRAMECDN_FOLLOW_FEED_ID", None,
        "Name of the follower's cursor in the bucket; unset means one made from the Orthanc "
        "URL's host and port.",
    )


@dataclass(frozen=True)
class ReceiveSettings(Section):
    """The DICOM receiver (``framecdn receive``): C-STORE from a PACS or a modality."""

    receive_ae_title: str = setting(
        "FRAMECDN_RECEIVE_AE_TITLE", "FRAMECDN",
        "The receiver's AE title; associations called to another title are refused.",
        check=ae_title,
    )
    receive_host: str = setting(
        "FRAMECDN_RECEIVE_HOST", "127.0.0.1",
        "Address the DICOM receiver listens on (`0.0.0.0` for every interface).",
        check=non_empty,
    )
    receive_port: int = setting(
        "FRAMECDN_RECEIVE_PORT", 11112, "TCP port of the DICOM receiver.",
        check=between(1, 65535),
    )
    receive_calling_aes: tuple[str, ...] = setting(
        "FRAMECDN_RECEIVE_CALLING_AES", (),
        "Comma-separated calling AE titles the receiver accepts, `AE` or `AE=site` (a site "
        "of `FRAMECDN_AUTH_SITES`: that caller's instances go under the site's prefix); "
        "empty accepts every caller, into `FRAMECDN_PREFIX`.",
        check=calling_ae_list,
    )
    receive_max_pdu: int = setting(
        "FRAMECDN_RECEIVE_MAX_PDU", 262144,
        "Largest PDU the receiver accepts, in bytes (senders cut data to fit).",
        check=between(4096, 16 * 1024 * 1024),
    )
    receive_max_associations: int = setting(
        "FRAMECDN_RECEIVE_MAX_ASSOCIATIONS", 8,
        "Associations the receiver serves at once; more are refused (the sender retries).",
        check=at_least(1),
    )
    receive_timeout: float = setting(
        "FRAMECDN_RECEIVE_TIMEOUT", 60.0,
        "Seconds the receiver waits for a sender to negotiate or send data before it "
        "aborts the association.",
        check=positive,
    )
    receive_metrics_port: int = setting(
        "FRAMECDN_RECEIVE_METRICS_PORT", 0,
        "Port of the receiver's Prometheus `/metrics` (on `FRAMECDN_RECEIVE_HOST`); 0 is off.",
        check=between(0, 65535),
    )
    receive_spool_dir: str | None = setting(
        "FRAMECDN_RECEIVE_SPOOL_DIR", None,
        "Directory where received instances are written while they are ingested (as large "
        "as the instances in flight); unset means the system's temporary directory.",
    )


@dataclass(frozen=True)
class Settings(
    ReceiveSettings,
    FollowSettings,
    IngestSettings,
    RenderSettings,
    FillSettings,
    UpstreamSettings,
    AccessSettings,
    OriginSettings,
    StorageSettings,
):
    """Every setting of framecdn: all the sections (storage first), checked together.

    The bases are listed last section first so that the fields (and the README table
    generated from them) come storage first, in the order of :data:`SECTIONS`.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_access_control(self)
        _check_receive(self)

    def with_overrides(
        self, sources: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored (unset flags).

        ``sources`` names where a value came from (``{"orthanc_url": "--url"}``): a
        refused value is then reported under that name, not its variable's.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        by_name = {f.name: f for f in fields(self)}
        for name, value in given.items():
            if sources and name in sources:
                _check_field(by_name[name], value, sources[name])
        return replace(self, **given)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: the process environment), checked."""
        environ = os.environ if environ is None else environ
        hints = _type_hints()
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable = f.metadata["env"]
            raw = environ.get(variable)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = parse_value(raw, hints[f.name], variable)
        return cls(**values)


#: The sections, in the order of the README's table.
SECTIONS: tuple[type[Section], ...] = (
    StorageSettings,
    OriginSettings,
    AccessSettings,
    UpstreamSettings,
    FillSettings,
    RenderSettings,
    IngestSettings,
    FollowSettings,
    ReceiveSettings,
)


def _check_field(f: Field[Any], value: Any, source: str) -> None:
    """Raise ConfigError naming ``source`` (a variable or a flag) if ``value`` is refused."""
    problem = _type_problem(value, _type_hints()[f.name])
    check = f.metadata.get("check")
    if problem is None and check is not None and value is not None:
        problem = check(value)
    if problem is not None:
        raise ConfigError(f"{source}={_show(value, f)} {problem}")


def _check_receive(settings: Settings) -> None:
    """Every site a calling AE title writes to is one of the sites."""
    sites = {site.name for site in settings.sites}
    for entry in settings.receive_calling_aes:
        title, _, site = (part.strip() for part in entry.partition("="))
        if site and site not in sites:
            raise ConfigError(
                f"FRAMECDN_RECEIVE_CALLING_AES sends {title!r} to site {site!r}, which is not "
                f"in FRAMECDN_AUTH_SITES ({', '.join(sorted(sites)) or 'empty'})"
            )


def _check_access_control(settings: Settings) -> None:
    """Settings that only make sense together (auth on needs a way to check credentials)."""
    if not settings.auth:
        return
    jwt = settings.auth_jwt_secret or settings.auth_jwks_url or settings.auth_jwks_file
    if not (jwt or settings.auth_api_keys_file):
        raise ConfigError(
            "FRAMECDN_AUTH=on needs FRAMECDN_AUTH_JWKS_URL, FRAMECDN_AUTH_JWKS_FILE, "
            "FRAMECDN_AUTH_JWT_SECRET or FRAMECDN_AUTH_API_KEYS_FILE"
        )
    if jwt and not (settings.auth_issuer and settings.auth_audience):
        raise ConfigError(
            "FRAMECDN_AUTH=on with JWTs needs FRAMECDN_AUTH_ISSUER and FRAMECDN_AUTH_AUDIENCE "
            "(a token for another service or realm must not open studies here)"
        )
    if "*" in settings.cors_origins:
        raise ConfigError(
            "FRAMECDN_CORS_ORIGINS='*' is refused with FRAMECDN_AUTH=on: list the viewers' "
            "origins, e.g. https://viewer.example.org"
        )
    if settings.delivery == "redirect" and settings.presign_window_seconds > (
        MAX_AUTH_PRESIGN_WINDOW
    ):
        raise ConfigError(
            f"FRAMECDN_PRESIGN_WINDOW={settings.presign_window_seconds} is too long with "
            f"FRAMECDN_AUTH=on and redirects: a redirect URL opens its frame to whoever holds "
            f"it for two windows; at most {MAX_AUTH_PRESIGN_WINDOW}"
        )
    sites = {site.name for site in settings.sites}
    if settings.auth_upstream_site is not None and settings.auth_upstream_site not in sites:
        raise ConfigError(
            f"FRAMECDN_AUTH_UPSTREAM_SITE={settings.auth_upstream_site!r} is not one of "
            "FRAMECDN_AUTH_SITES"
        )


# Parsing and rendering ---------------------------------------------------------------


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of a field annotation such as ``int`` or ``str | None``."""
    args = typing.get_args(annotation)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def parse_value(raw: str, annotation: Any, variable: str) -> Any:
    """One environment value as the field's type; raises ConfigError naming ``variable``."""
    kind, _ = _base_type(annotation)
    text = raw.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{variable}={raw!r} is not a boolean (1/true/yes/on or 0/false/no/off)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a whole number") from None
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{variable}={raw!r} is not a finite number")
        return number
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit the field's type (values set in code or by flags)."""
    kind, optional = _base_type(annotation)
    if value is None:
        return None if optional else "must be set"
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    return None if ok else f"must be of type {getattr(kind, '__name__', kind)}"


def _show(value: Any, f: Field[Any]) -> str:
    if not f.repr:
        return "<secret>"
    return redact_userinfo(repr(",".join(value) if isinstance(value, tuple) else value))


def _default_text(f: Field[Any]) -> str | None:
    if f.default is None:
        return None
    value = ",".join(f.default) if isinstance(f.default, tuple) else f.default
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "empty" if value == "" else f"`{value}`"


def _documented() -> list[Field[Any]]:
    return [f for f in fields(Settings) if f.metadata["documented"]]


def describe(name: str) -> str:
    """A setting's description with its default appended (for ``--help`` texts)."""
    (f,) = [f for f in fields(Settings) if f.name == name]
    default = _default_text(f)
    text = f.metadata["help"].replace("`", "")
    return f"{text} Default: {default.replace('`', '')}." if default else text


#: Documented environment variable -> (Settings field, description): the README table's rows.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    f.metadata["env"]: (f.name, f.metadata["help"]) for f in _documented()
}


def environment_table() -> str:
    """The README's configuration table, as Markdown."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in _documented():
        default = _default_text(f) or "unset"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)
