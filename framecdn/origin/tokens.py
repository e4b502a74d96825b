"""Bearer JWTs, verified with PyJWT: HS256 with a shared secret, or RS/ES keys of a JWKS.

The algorithm a token may use follows from the key that verifies it, never from the
token alone: an HMAC secret verifies only HS256, an RSA key only RS*/PS*, an EC key
only the ES* of its curve, and ``none`` nothing. So a token signed with HMAC over an
RSA public key (the classic confusion) or one without signature is refused.

Keys of a JWKS (a file, or the identity provider's URL as OIDC publishes it) are kept
in memory by ``kid``. A token naming an unknown ``kid`` makes one fetch -- at most one
per ``FRAMECDN_AUTH_JWKS_REFRESH_SECONDS``, so a flood of made-up ``kid``s cannot make
the origin hammer the provider -- which is how a rotated key is picked up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt

from framecdn.errors import ConfigError, FramecdnError
from framecdn.framestore.config import Settings

log = logging.getLogger("framecdn.origin")

#: Algorithms each JWK key type may verify. HMAC ("oct") keys are not taken from a JWKS.
_BY_KEY_TYPE: dict[str, tuple[str, ...]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_JWKS_TIMEOUT = 5.0


class InvalidToken(FramecdnError, ValueError):
    """The token does not open anything here; ``str()`` is a short reason for the log."""


def allowed_algorithms(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """What a JWK may verify: its type's algorithms, narrowed by its curve and ``alg``."""
    kty = jwk.get("kty")
    allowed = _BY_KEY_TYPE.get(kty if isinstance(kty, str) else "", ())
    if kty == "EC":
        curve = _EC_CURVES.get(str(jwk.get("crv")))
        allowed = (curve,) if curve else ()
    declared = jwk.get("alg")
    if isinstance(declared, str):
        allowed = tuple(a for a in allowed if a == declared)
    return allowed


class KeySet:
    """The verifying keys of a JWKS file and/or URL, by ``kid``, fetched when needed."""

    def __init__(
        self,
        url: str | None,
        file: str | None,
        *,
        refresh_seconds: float,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.file = file
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._keys: dict[str | None, tuple[jwt.PyJWK, tuple[str, ...]]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        #: How many times the keys were (re)loaded: tests watch the rate limit with it.
        self.loads = 0
        if file is not None:
            self._install(self._read_file(), strict=True)

    def _read_file(self) -> dict[str, Any]:
        assert self.file is not None
        try:
            data = json.loads(Path(self.file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"FRAMECDN_AUTH_JWKS_FILE={self.file!r} is not readable JSON: {exc}"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ConfigError(
                f"FRAMECDN_AUTH_JWKS_FILE={self.file!r} is not a JWKS ({{'keys': [...]}})"
            )
        return data

    def _install(self, *sets: dict[str, Any], strict: bool = False) -> None:
        keys: dict[str | None, tuple[jwt.PyJWK, tuple[str, ...]]] = {}
        for data in sets:
            for entry in data.get("keys", []):
                if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                    continue
                algorithms = allowed_algorithms(entry)
                if not algorithms:
                    continue  # an HMAC or unknown key type: never verifies here
                try:
                    key = jwt.PyJWK(entry, algorithm=algorithms[0])
                except jwt.PyJWTError as exc:
                    if strict:
                        kid = entry.get("kid")
                        raise ConfigError(f"JWKS key {kid!r} unusable: {exc}") from None
                    log.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
                    continue
                keys[entry.get("kid")] = (key, algorithms)
        self._keys = keys
        self.loads += 1

    async def _fetch_url(self) -> dict[str, Any]:
        assert self.url is not None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=_JWKS_TIMEOUT, follow_redirects=False)
        response = await self._client.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError("not a JWKS object")
        return data

    async def _reload(self) -> None:
        """Fetch the keys again (under the lock; at most once per refresh interval)."""
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.refresh_seconds:
                return  # someone just did (or may not yet again)
            self._fetched_at = now
            try:
                sets = [self._read_file()] if self.file else []
                if self.url:
                    sets.append(await self._fetch_url())
            except (ConfigError, httpx.HTTPError, ValueError) as exc:
                log.warning("JWKS not refreshed (old keys kept): %s", exc)
                return
            self._install(*sets)

    async def key(self, kid: str | None) -> tuple[jwt.PyJWK, tuple[str, ...]] | None:
        """The key named ``kid`` and what it may verify (None: no such key, even after a fetch)."""
        stale = self._fetched_at is None or self._clock() - self._fetched_at > self.max_age_seconds
        if self.url and stale:
            await self._reload()
        found = self._pick(kid)
        if found is None:
            await self._reload()  # a rotated key? (rate-limited inside)
            found = self._pick(kid)
        return found

    def _pick(self, kid: str | None) -> tuple[jwt.PyJWK, tuple[str, ...]] | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


_FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.DecodeError, "malformed"),
)


#: RFC 7519 §2: NumericDate claims are JSON numbers, never strings (nor booleans).
_DATE_CLAIMS = ("exp", "nbf", "iat")


def dates_are_numbers(claims: Mapping[str, Any]) -> bool:
    """Whether every date claim present is a JSON number (bool is not one)."""
    return all(
        isinstance(claims[name], int | float) and not isinstance(claims[name], bool)
        for name in _DATE_CLAIMS
        if name in claims
    )


def authorized_party(claims: Mapping[str, Any]) -> object:
    """The client the token was issued to: OIDC's ``azp`` (Keycloak), else the
    ``client_id`` of an RFC 9068 JWT access token (node-oidc-provider, and others that
    follow that profile, carry no ``azp``)."""
    return claims["azp"] if "azp" in claims else claims.get("client_id")


class TokenVerifier:
    """Checks a JWT's signature, ``exp``, ``nbf``, ``iat``, ``iss``, ``aud`` (and ``azp``)."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.auth_jwt_secret
        self.issuer = settings.auth_issuer
        self.audience = list(settings.auth_audience)
        self.parties = frozenset(settings.auth_authorized_parties)
        self.leeway = settings.auth_leeway_seconds
        self.keys: KeySet | None = None
        if settings.auth_jwks_url or settings.auth_jwks_file:
            self.keys = KeySet(
                settings.auth_jwks_url,
                settings.auth_jwks_file,
                refresh_seconds=settings.auth_jwks_refresh_seconds,
                max_age_seconds=settings.auth_jwks_max_age_seconds,
            )

    async def _key_for(self, header: Mapping[str, Any]) -> tuple[Any, list[str]]:
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise InvalidToken("algorithm not allowed")
        if algorithm.startswith("HS"):
            if self.secret is None or algorithm != "HS256":
                raise InvalidToken("algorithm not allowed")
            return self.secret, ["HS256"]
        if self.keys is None:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        found = await self.keys.key(kid if isinstance(kid, str) else None)
        if found is None:
            raise InvalidToken("unknown key id")
        key, algorithms = found
        if algorithm not in algorithms:
            raise InvalidToken("algorithm not allowed for its key")
        return key, [algorithm]

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`InvalidToken` saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        key, algorithms = await self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            for kind, reason in _FAILURES:
                if isinstance(exc, kind):
                    raise InvalidToken(reason) from None
            raise InvalidToken("invalid") from None
        if not dates_are_numbers(claims):
            raise InvalidToken("date not a number")
        if self.parties and authorized_party(claims) not in self.parties:
            raise InvalidToken("wrong authorized party")
        return claims

    async def aclose(self) -> None:
        if self.keys is not None:
            await self.keys.aclose()
