"""The ``Authorization`` header framecdn sends to its upstream DICOMweb server.

The origin (proxying) and the fill service (downloading instances) talk to the same
upstream with the same credentials, so both read them here: a bearer token, or a user
and password for basic authentication, from the environment or from a file (so they
never show in ``ps`` or in a compose file). Messages never carry a secret.
"""

from __future__ import annotations

import base64
from pathlib import Path

from framecdn.errors import ConfigError
from framecdn.framestore.config import UpstreamSettings

BEARER = "bearer "


def upstream_authorization(settings: UpstreamSettings) -> str | None:
    """The header value (``Basic ...`` / ``Bearer ...``), or None without credentials."""
    if settings.upstream_credentials_file:
        return _from_file(Path(settings.upstream_credentials_file))
    if settings.upstream_token and settings.upstream_username:
        raise ConfigError(
            "FRAMECDN_UPSTREAM_TOKEN and FRAMECDN_UPSTREAM_USERNAME are both set: choose one"
        )
    if settings.upstream_token:
        return f"Bearer {settings.upstream_token.strip()}"
    if settings.upstream_password and not settings.upstream_username:
        raise ConfigError("FRAMECDN_UPSTREAM_PASSWORD is set without FRAMECDN_UPSTREAM_USERNAME")
    if settings.upstream_username:
        return basic(settings.upstream_username, settings.upstream_password or "")
    return None


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def read_credentials_file(path: Path, name: str) -> str:
    """The stripped text of a credentials file (``name`` says which in the message, which
    never carries the contents); ConfigError when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {name} {path}: {exc.strerror}") from None


def _from_file(path: Path) -> str:
    text = read_credentials_file(path, "the upstream credentials file")
    if not text or "\n" in text:
        raise ConfigError(
            f"upstream credentials file {path} must hold one line: user:password or "
            "Bearer <token>"
        )
    if text.lower().startswith(BEARER):
        token = text[len(BEARER) :].strip()
        if token:
            return f"Bearer {token}"
    else:
        user, colon, password = text.partition(":")
        if colon and user:
            return basic(user, password)
    raise ConfigError(
        f"upstream credentials file {path} must hold one line: user:password or Bearer <token>"
    )
