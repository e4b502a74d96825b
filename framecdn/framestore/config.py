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
    ingest_max_inflate_ratio: int = 200
    ingest_max_inflated_mb: int = 4096

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
    "FRAMECDN_INGEST_MAX_INFLATE_RATIO": (
        "ingest_max_inflate_ratio",
        "A deflated file may inflate at most this many times its size, past its first 16 MB "
        "(default 200).",
    ),
    "FRAMECDN_INGEST_MAX_INFLATED_MB": (
        "ingest_max_inflated_mb",
        "A deflated file may inflate to at most this many MB, spooled to disk (default 4096).",
    ),
}


def environment_table() -> str:
    """The README's configuration table, as Markdown."""
    rows = ["| Variable | Meaning |", "| --- | --- |"]
    rows += [f"| `{variable}` | {text} |" for variable, (_, text) in ENVIRONMENT.items()]
    return "\n".join(rows)
