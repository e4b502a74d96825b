"""S3 clients and presigned URLs, configured the same way for ingest and origin.

Presigning is local HMAC. The signing time is bucketed to a window so the URL of a
frame stays identical for that window and a CDN can cache the redirect target.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from urllib.parse import quote

import boto3
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from framecdn.framestore.config import Settings


def client_config(settings: Settings, *, max_connections: int | None = None) -> Config:
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


def make_client(settings: Settings, *, max_connections: int | None = None):
    """A boto3 S3 client for the internal endpoint. Thread-safe; make one per process."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=client_config(settings, max_connections=max_connections),
    )


def resolve_credentials(settings: Settings) -> ReadOnlyCredentials:
    """The credentials presigned URLs are signed with (explicit, or boto3's default chain)."""
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return ReadOnlyCredentials(settings.aws_access_key_id, settings.aws_secret_access_key, None)
    found = boto3.session.Session().get_credentials()
    if found is None:
        raise RuntimeError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return found.get_frozen_credentials()


class _BucketedQueryAuth(S3SigV4QueryAuth):
    """SigV4 query signing at a given time instead of now."""

    def __init__(self, credentials, region: str, expires: int, signed_at: datetime) -> None:
        super().__init__(credentials, "s3", region, expires=expires)
        self._signed_at = signed_at

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self._signed_at.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


class Presigner:
    """Presigns GETs for one bucket on one endpoint, stable within a time window.

    A URL signed at the start of window W is valid until the end of window W+1,
    so a client always gets at least one full window of validity.
    """

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        credentials: ReadOnlyCredentials,
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

    @classmethod
    def public(cls, settings: Settings) -> Presigner:
        """A presigner for the endpoint clients reach (the public one when set)."""
        endpoint = settings.public_endpoint or f"https://s3.{settings.aws_region}.amazonaws.com"
        return cls(
            endpoint,
            settings.bucket,
            resolve_credentials(settings),
            settings.aws_region,
            settings.presign_window_seconds,
        )

    def url(self, key: str, *, now: float | None = None) -> str:
        now = time.time() if now is None else now
        window_start = int(now) - int(now) % self.window_seconds
        signed_at = datetime.fromtimestamp(window_start, tz=timezone.utc)
        expires = min(2 * self.window_seconds, 7 * 24 * 3600)
        request = AWSRequest(
            method="GET", url=f"{self.endpoint}/{self.bucket}/{quote(key, safe='/~')}"
        )
        _BucketedQueryAuth(self.credentials, self.region, expires, signed_at).add_auth(request)
        return request.url
