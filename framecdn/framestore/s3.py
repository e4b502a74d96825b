"""S3 clients and presigned URLs, configured the same way for ingest and origin.

Presigning is local HMAC (:mod:`framecdn.framestore.sigv4`). The signing time is
bucketed to a window so the URL of a frame stays identical for that window and a CDN
can cache the redirect target.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import boto3
from botocore.config import Config

from framecdn.errors import ConfigError
from framecdn.framestore.config import StorageSettings
from framecdn.framestore.sigv4 import MAX_EXPIRES, SigningKeys, presign


def client_config(settings: StorageSettings, *, max_connections: int | None = None) -> Config:
    """botocore settings that work on AWS, MinIO and SeaweedFS alike."""
    return Config(
        s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max_connections or settings.s3_max_connections,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        tcp_keepalive=True,
    )


def make_client(settings: StorageSettings, *, max_connections: int | None = None) -> Any:
    """A boto3 S3 client for the internal endpoint. Thread-safe; make one per process."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=client_config(settings, max_connections=max_connections),
    )


def resolve_credentials(settings: StorageSettings) -> SigningKeys:
    """The keys requests are signed with (explicit, or boto3's default chain)."""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return SigningKeys(settings.aws_access_key_id, settings.aws_secret_access_key)
    found = boto3.session.Session().get_credentials()
    if found is None:
        raise ConfigError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or configure boto3's credential chain)"
        )
    frozen = found.get_frozen_credentials()
    return SigningKeys(frozen.access_key, frozen.secret_key, frozen.token)


class Presigner:
    """Presigns GETs for one bucket on one endpoint, stable within a time window.

    A URL signed at the start of window W is valid until the end of window W+1,
    so a client always gets at least one full window of validity.
    """

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        credentials: SigningKeys,
        region: str,
        window_seconds: int = 3600,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("presign window must be at least one second")
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.credentials = credentials
        self.region = region
        self.window_seconds = window_seconds
        self.expires = min(2 * window_seconds, MAX_EXPIRES)

    @classmethod
    def public(cls, settings: StorageSettings) -> Presigner:
        """A presigner for the endpoint clients reach (the public one when set)."""
        return cls.for_endpoint(settings, settings.public_endpoint)

    @classmethod
    def internal(cls, settings: StorageSettings, window_seconds: int | None = None) -> Presigner:
        """A presigner for the endpoint the origin (or nginx beside it) reaches."""
        return cls.for_endpoint(settings, settings.internal_endpoint, window_seconds)

    @classmethod
    def for_endpoint(
        cls, settings: StorageSettings, endpoint: str, window_seconds: int | None = None
    ) -> Presigner:
        return cls(
            endpoint,
            settings.bucket,
            resolve_credentials(settings),
            settings.aws_region,
            window_seconds or settings.presign_window_seconds,
        )

    def window(self, now: float) -> int:
        """The number of the signing window ``now`` falls in."""
        return int(now) // self.window_seconds

    def url(self, key: str, *, now: float | None = None) -> str:
        """A presigned GET of ``key``, signed at the start of the current window."""
        now = time.time() if now is None else now
        signed_at = datetime.fromtimestamp(self.window(now) * self.window_seconds, tz=UTC)
        url = f"{self.endpoint}/{self.bucket}/{quote(key, safe='/~')}"
        return presign(
            url, self.credentials, region=self.region, signed_at=signed_at, expires=self.expires
        )
