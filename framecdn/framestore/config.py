"""All of framecdn's configuration, in one place.

Every setting has an environment variable (``FRAMECDN_*`` plus the standard
``AWS_*``); the CLI's flags override them. The README's configuration table is
generated from :data:`ENVIRONMENT` so the two never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DELIVERY_MODES = ("stream", "redirect", "accel")


@dataclass(frozen=True, slots=True)
class Settings:
    # Storage
    s3_endpoint: str | None = None
    s3_public_endpoint: str | None = None
    bucket: str = "framecdn"
    prefix: str = ""
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str = "us-east-1"
    s3_max_connections: int = 64
    s3_connect_timeout: float = 3.0
    s3_read_timeout: float = 15.0
    # Origin
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    root_path: str = "/dicom-web"
    delivery: str = "stream"
    upstream_url: str | None = None
    cors_origins: tuple[str, ...] = ("*",)
    frame_cache_control: str = "public, max-age=31536000, immutable"
    metadata_cache_control: str = "public, max-age=300"
    max_frames_per_request: int = 256
    presign_window_seconds: int = 3600
    accel_location: str = "/_framecdn_s3/"
    frame_prefetch: int = 4
    stream_chunk_bytes: int = 262144
    public_url: str | None = None
    # Ingest
    ingest_workers: int = 8
    ingest_memory_mb: int = 64
    # Orthanc follower
    orthanc_url: str | None = None
    orthanc_username: str | None = None
    orthanc_password: str | None = None
    orthanc_credentials_file: str | None = None
    orthanc_timeout: float = 60.0
    follow_trigger: str = "NewInstance"
    follow_concurrency: int = 2
    follow_poll_seconds: float = 2.0
    follow_retry_seconds: float = 1.0
    follow_retry_max_seconds: float = 60.0
    follow_max_attempts: int = 5
    follow_modalities: tuple[str, ...] = ()
    follow_sop_classes: tuple[str, ...] = ()
    follow_min_frames: int = 1
    follow_shard: str = "0/1"
    follow_feed_id: str | None = None

    def __post_init__(self) -> None:
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(
                f"delivery must be one of {', '.join(DELIVERY_MODES)}, got {self.delivery!r}"
            )
        if self.s3_max_connections < 1 or self.ingest_workers < 1:
            raise ValueError("connection and worker counts must be at least 1")

    @property
    def public_endpoint(self) -> str | None:
        """The S3 URL clients reach (presigned redirects are signed for this host)."""
        return self.s3_public_endpoint or self.s3_endpoint

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored (unset flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for variable, (name, _) in ENVIRONMENT.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            values[name] = _parse(raw, types[name], variable)
        return cls(**values)


def _parse(raw: str, annotation: Any, variable: str) -> Any:
    text = str(annotation)
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
        if text.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"{variable}={raw!r}: {exc}") from None
    return raw


#: Environment variable -> (Settings field, description). The README table comes from here.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "FRAMECDN_S3_ENDPOINT": ("s3_endpoint", "Internal S3 URL (unset: AWS S3)."),
    "FRAMECDN_S3_PUBLIC_ENDPOINT": (
        "s3_public_endpoint",
        "S3 URL clients reach, used to sign redirects (default: the internal endpoint).",
    ),
    "FRAMECDN_BUCKET": ("bucket", "Bucket holding the frames (default `framecdn`)."),
    "FRAMECDN_PREFIX": ("prefix", "Key prefix, e.g. one per clinic (default empty)."),
    "AWS_ACCESS_KEY_ID": ("aws_access_key_id", "S3 access key."),
    "AWS_SECRET_ACCESS_KEY": ("aws_secret_access_key", "S3 secret key."),
    "AWS_REGION": ("aws_region", "S3 region / signing region (default `us-east-1`)."),
    "FRAMECDN_S3_MAX_CONNECTIONS": (
        "s3_max_connections",
        "S3 connection pool size per process (default 64).",
    ),
    "FRAMECDN_S3_CONNECT_TIMEOUT": (
        "s3_connect_timeout",
        "Seconds to connect to S3 before answering 503 (default 3).",
    ),
    "FRAMECDN_S3_READ_TIMEOUT": (
        "s3_read_timeout",
        "Seconds to wait for S3 data before answering 504 (default 15).",
    ),
    "FRAMECDN_HOST": ("host", "Origin bind address (default `127.0.0.1`)."),
    "FRAMECDN_PORT": ("port", "Origin port (default 8080)."),
    "FRAMECDN_WORKERS": ("workers", "Origin worker processes (default 1)."),
    "FRAMECDN_ROOT_PATH": ("root_path", "DICOMweb root path (default `/dicom-web`)."),
    "FRAMECDN_DELIVERY": ("delivery", "`stream` (default), `redirect` or `accel`."),
    "FRAMECDN_UPSTREAM_URL": ("upstream_url", "DICOMweb root to fall back to on a miss."),
    "FRAMECDN_CORS_ORIGINS": ("cors_origins", "Comma-separated allowed origins (default `*`)."),
    "FRAMECDN_FRAME_CACHE_CONTROL": (
        "frame_cache_control",
        "Cache-Control of frames (default `public, max-age=31536000, immutable`).",
    ),
    "FRAMECDN_METADATA_CACHE_CONTROL": (
        "metadata_cache_control",
        "Cache-Control of metadata (default `public, max-age=300`).",
    ),
    "FRAMECDN_MAX_FRAMES_PER_REQUEST": (
        "max_frames_per_request",
        "Most frames one request may list (default 256).",
    ),
    "FRAMECDN_PRESIGN_WINDOW": (
        "presign_window_seconds",
        "Presigned URLs are stable within windows of this many seconds (default 3600).",
    ),
    "FRAMECDN_ACCEL_LOCATION": (
        "accel_location",
        "nginx internal location for `accel` delivery (default `/_framecdn_s3/`).",
    ),
    "FRAMECDN_FRAME_PREFETCH": (
        "frame_prefetch",
        "Frames of a list the origin fetches from S3 concurrently (default 4).",
    ),
    "FRAMECDN_STREAM_CHUNK_BYTES": (
        "stream_chunk_bytes",
        "Bytes the origin forwards per write when streaming (default 262144).",
    ),
    "FRAMECDN_PUBLIC_URL": (
        "public_url",
        "Origin URL clients use (`https://host[:port]`), for BulkDataURI and Content-Location "
        "(default: each request's Host).",
    ),
    "FRAMECDN_INGEST_WORKERS": ("ingest_workers", "Parallel uploads during ingest (default 8)."),
    "FRAMECDN_INGEST_MEMORY_MB": (
        "ingest_memory_mb",
        "Frame bytes ingest holds in memory at once (default 64; one frame always fits).",
    ),
    "FRAMECDN_ORTHANC_URL": (
        "orthanc_url",
        "Orthanc REST root the follower reads, e.g. `http://orthanc:8042`.",
    ),
    "FRAMECDN_ORTHANC_USERNAME": ("orthanc_username", "Orthanc user of the follower."),
    "FRAMECDN_ORTHANC_PASSWORD": ("orthanc_password", "Password of that Orthanc user."),
    "FRAMECDN_ORTHANC_CREDENTIALS_FILE": (
        "orthanc_credentials_file",
        "File holding `user:password` for Orthanc (instead of the two variables above).",
    ),
    "FRAMECDN_ORTHANC_TIMEOUT": (
        "orthanc_timeout",
        "Seconds the follower waits for Orthanc to connect or send data (default 60).",
    ),
    "FRAMECDN_FOLLOW_TRIGGER": (
        "follow_trigger",
        "`NewInstance` (default: ingest each instance as it arrives) or `StableSeries` "
        "(whole series once Orthanc considers them complete).",
    ),
    "FRAMECDN_FOLLOW_CONCURRENCY": (
        "follow_concurrency",
        "Instances the follower downloads and ingests at once (default 2).",
    ),
    "FRAMECDN_FOLLOW_POLL_SECONDS": (
        "follow_poll_seconds",
        "Seconds between polls of Orthanc's change feed when it has nothing new (default 2).",
    ),
    "FRAMECDN_FOLLOW_RETRY_SECONDS": (
        "follow_retry_seconds",
        "First retry delay after a failure; doubles each time (default 1).",
    ),
    "FRAMECDN_FOLLOW_RETRY_MAX_SECONDS": (
        "follow_retry_max_seconds",
        "Longest retry delay (default 60).",
    ),
    "FRAMECDN_FOLLOW_MAX_ATTEMPTS": (
        "follow_max_attempts",
        "Attempts before an instance that fails to ingest (with Orthanc and S3 healthy) is "
        "reported and passed over (default 5).",
    ),
    "FRAMECDN_FOLLOW_MODALITIES": (
        "follow_modalities",
        "Comma-separated modalities to follow, e.g. `MG` (default: all).",
    ),
    "FRAMECDN_FOLLOW_SOP_CLASSES": (
        "follow_sop_classes",
        "Comma-separated SOP Class UIDs to follow (default: all).",
    ),
    "FRAMECDN_FOLLOW_MIN_FRAMES": (
        "follow_min_frames",
        "Follow only instances with at least this many frames (default 1).",
    ),
    "FRAMECDN_FOLLOW_SHARD": (
        "follow_shard",
        "`K/N`: this follower takes the instances whose SOP Instance UID hashes to K "
        "(0-based) of N (default `0/1`).",
    ),
    "FRAMECDN_FOLLOW_FEED_ID": (
        "follow_feed_id",
        "Name of the follower's cursor in the bucket (default: from the Orthanc URL's host "
        "and port).",
    ),
}


def environment_table() -> str:
    """The README's configuration table, as Markdown."""
    rows = ["| Variable | Meaning |", "| --- | --- |"]
    rows += [f"| `{variable}` | {text} |" for variable, (_, text) in ENVIRONMENT.items()]
    return "\n".join(rows)
