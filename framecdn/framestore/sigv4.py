"""AWS Signature Version 4 query signing: presigned S3 URLs from the public spec.

A presigned URL is the request's own authorisation, computed locally (no network):

1. the *canonical request*: method, URI-encoded path, the sorted ``X-Amz-*`` query
   parameters, the signed ``host`` header and ``UNSIGNED-PAYLOAD``;
2. the *string to sign*: algorithm, timestamp, credential scope
   (``date/region/service/aws4_request``) and the canonical request's SHA-256;
3. the signature: HMAC-SHA256 of that string under a key derived by an HMAC chain
   from the secret over date, region, service and ``aws4_request``.

The signing time is a parameter, so callers can bucket it (a URL that stays the same
for a window is cacheable). See AWS's "Authenticating Requests: Using Query
Parameters (AWS Signature Version 4)"; tests check the output against botocore's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit, urlunsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 7 * 24 * 3600  # SigV4 refuses longer-lived URLs
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """What a signature is made with (botocore's frozen credentials fit this shape)."""

    access_key: str
    secret_key: str
    token: str | None = None


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """SigV4's URI encoding: everything but unreserved characters (and ``/`` in paths)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The HMAC chain: ``AWS4<secret>`` over date, region, service, ``aws4_request``."""
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def host_header(url: str) -> str:
    """The ``host`` value a client sends: lower-case, default port left out."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def presign(
    url: str,
    keys: SigningKeys,
    *,
    region: str,
    signed_at: datetime,
    expires: int,
    method: str = "GET",
    service: str = "s3",
) -> str:
    """``url`` (path already URI-encoded, no query) with SigV4 query authentication."""
    if not 1 <= expires <= MAX_EXPIRES:
        raise ValueError(f"expires must be 1..{MAX_EXPIRES} seconds, got {expires}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("presign takes a URL without query or fragment")
    timestamp = signed_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    date = timestamp[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    params = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{keys.access_key}/{scope}",
        "X-Amz-Date": timestamp,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    if keys.token:
        params["X-Amz-Security-Token"] = keys.token
    query = "&".join(
        f"{name}={value}"
        for name, value in sorted((uri_encode(k), uri_encode(v)) for k, v in params.items())
    )
    canonical_request = "\n".join(
        [method, parts.path or "/", query, f"host:{host_header(url)}\n", "host", UNSIGNED_PAYLOAD]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = signing_key(keys.secret_key, date, region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return urlunsplit(
        (parts.scheme, parts.netloc, parts.path, f"{query}&X-Amz-Signature={signature}", "")
    )
