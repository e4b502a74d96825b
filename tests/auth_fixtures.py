"""What the access-control tests share: an identity provider of our own and two clinics.

No Keycloak here, so :class:`IdentityProvider` plays one: RSA and EC key pairs made with
``cryptography``, a JWKS served over real HTTP on loopback (the keys can be rotated while
it runs, and it counts fetches), and access tokens shaped like Keycloak's (``iss`` a realm
URL, ``aud`` a list, ``azp`` the viewer's client id, ``typ``, ``preferred_username``,
custom claims at the top level as Keycloak's attribute mappers put them).

:func:`two_clinics` ingests small instances under two site prefixes of one bucket.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from framecdn.framestore.config import Settings
from framecdn.origin.apikeys import digest_line, new_api_key
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, ingest

AUDIENCE = "framecdn"
CLIENT_ID = "ohif"
HS_SECRET = "an-hs256-shared-secret-of-32-bytes-or-more!"
CACHE_SECRET = "nginx-and-origin-share-this-secret"
VIEWER = "http://viewer.example.org"


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        to_jwk = RSAAlgorithm.to_jwk if self.algorithm.startswith("RS") else ECAlgorithm.to_jwk
        jwk: dict[str, Any] = to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return jwk


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class IdentityProvider:
    """A Keycloak-like realm: JWKS over HTTP, tokens on demand."""

    url: str  # the realm URL: the tokens' issuer
    keys: list[SigningKey]
    fetches: int = 0
    extra: list[SigningKey] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/protocol/openid-connect/certs"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}

    def token(
        self,
        key: SigningKey | None = None,
        *,
        lifetime: float = 300,
        not_before: float | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An access token as Keycloak issues it; ``claims`` override or add (None removes)."""
        key = key or self.keys[0]
        now = time.time()
        body: dict[str, Any] = {
            "exp": int(now + lifetime),
            "iat": int(now) - 1,
            "nbf": int(not_before if not_before is not None else now - 1),
            "jti": uuid.uuid4().hex,
            "iss": self.url,
            "aud": [AUDIENCE, "account"],
            "sub": str(uuid.uuid4()),
            "typ": "Bearer",
            "azp": CLIENT_ID,
            "preferred_username": "reader",
            "scope": "openid profile",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})}
        )


def bearer(token: str) -> dict[str, str]:
    """The request header that carries ``token``."""
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def identity_provider() -> Iterator[IdentityProvider]:
    """The realm's JWKS served on a free loopback port until the block ends."""
    provider = IdentityProvider("", [rsa_key("rsa-1"), ec_key("ec-1")])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/realms/clinics/protocol/openid-connect/certs":
                self.send_error(404)
                return
            provider.fetches += 1
            body = json.dumps(provider.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/realms/clinics"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Clinics:
    """Instances under two sites' prefixes of one bucket, and an API key for each site."""

    base: Settings  # the origin's prefix: sites are under it
    a1: Expected
    a2: Expected
    b1: Expected
    api_keys_file: Path
    key_a: str
    key_b: str
    key_all: str


def two_clinics(base: Settings, directory: Path) -> Clinics:
    """Site ``a`` holds two studies, site ``b`` one; each instance is 2 small frames."""
    made = []
    for site, seed in (("a", 101), ("a", 102), ("b", 103)):
        path = directory / f"{site}-{seed}.dcm"
        write_tomosynthesis(path, frames=2, rows=64, columns=64, seed=seed)
        made.append(ingest(path, base.with_overrides(prefix=f"{base.prefix}/{site}")))
    key_a, key_b, key_all = new_api_key(), new_api_key(), new_api_key()
    keys_file = directory / "api-keys"
    keys_file.write_text(
        "# framecdn API keys: digest, site(s), subject\n"
        f"{digest_line(key_a, 'a', 'bridge-a')}\n"
        f"{digest_line(key_b, 'b', 'bridge-b')}\n\n"
        f"{digest_line(key_all, '*', 'reading-service')}\n"
    )
    return Clinics(base, *made, keys_file, key_a, key_b, key_all)


def auth_settings(clinics: Clinics, provider: IdentityProvider, **overrides: Any) -> Settings:
    """Auth on: the realm's JWKS URL, the HS secret, the API keys; sites a and b."""
    values: dict[str, Any] = {
        "auth": True,
        "auth_sites": ("a", "b"),
        "auth_jwks_url": provider.jwks_url,
        "auth_jwt_secret": HS_SECRET,
        "auth_issuer": provider.url,
        "auth_audience": (AUDIENCE,),
        "auth_authorized_parties": (CLIENT_ID,),
        "auth_api_keys_file": str(clinics.api_keys_file),
        "auth_jwks_refresh_seconds": 1.0,
        "cors_origins": (VIEWER,),
    }
    values.update(overrides)
    return clinics.base.with_overrides(**values)
