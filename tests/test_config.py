"""Settings: read from the environment, checked, documented from one declaration each."""

from __future__ import annotations

from dataclasses import fields

import pytest

from framecdn.errors import ConfigError
from framecdn.framestore.config import (
    ENVIRONMENT,
    Settings,
    describe,
    environment_table,
    parse_value,
)


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "FRAMECDN_S3_ENDPOINT": "http://s3.local:9000",
            "FRAMECDN_BUCKET": "frames",
            "FRAMECDN_PREFIX": "clinic-b",
            "FRAMECDN_DELIVERY": "redirect",
            "FRAMECDN_CORS_ORIGINS": "https://a.example, https://b.example",
            "FRAMECDN_INGEST_WORKERS": "3",
            "FRAMECDN_S3_READ_TIMEOUT": "2.5",
            "FRAMECDN_INDEX_CACHE_SECONDS": "0",
            "AWS_REGION": "eu-west-1",
            "FRAMECDN_PORT": "",  # empty counts as unset
        }
    )
    assert settings.s3_endpoint == "http://s3.local:9000"
    assert settings.bucket == "frames" and settings.prefix == "clinic-b"
    assert settings.delivery == "redirect"
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.ingest_workers == 3 and settings.aws_region == "eu-west-1"
    assert settings.s3_read_timeout == 2.5 and settings.index_cache_seconds == 0
    assert settings.port == Settings().port


def test_endpoints_have_one_source() -> None:
    aws = Settings(aws_region="eu-west-1")
    assert aws.internal_endpoint == "https://s3.eu-west-1.amazonaws.com"
    assert aws.public_endpoint == aws.internal_endpoint
    local = Settings(s3_endpoint="http://s3.local:9000/")
    assert local.internal_endpoint == local.public_endpoint == "http://s3.local:9000"
    public = local.with_overrides(s3_public_endpoint="https://frames.example.org")
    assert public.public_endpoint == "https://frames.example.org"
    assert public.internal_endpoint == "http://s3.local:9000"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FRAMECDN_STREAM_CHUNK_BYTES", "10"),  # refused, not raised to 64 KiB
        ("FRAMECDN_S3_READ_TIMEOUT", "-1"),
        ("FRAMECDN_S3_CONNECT_TIMEOUT", "0"),
        ("FRAMECDN_S3_READ_TIMEOUT", "nan"),
        ("FRAMECDN_WORKERS", "0"),
        ("FRAMECDN_INGEST_WORKERS", "0"),
        ("FRAMECDN_FRAME_PREFETCH", "0"),
        ("FRAMECDN_PORT", "eighty"),
        ("FRAMECDN_PORT", "70000"),
        ("FRAMECDN_DELIVERY", "teleport"),
        ("FRAMECDN_S3_ENDPOINT", "s3.local:9000"),
        ("FRAMECDN_S3_ENDPOINT", "ftp://s3.local"),
        ("FRAMECDN_S3_PUBLIC_ENDPOINT", "https://"),
        ("FRAMECDN_PUBLIC_URL", "https://viewer.example/?x=1"),
        ("FRAMECDN_CORS_ORIGINS", "https://a.example,viewer.example"),
        ("FRAMECDN_ROOT_PATH", "dicom-web"),
        ("FRAMECDN_PRESIGN_WINDOW", "0"),
        ("FRAMECDN_PRESIGN_WINDOW", "700000"),  # two windows would outlive SigV4's 7 days
        ("FRAMECDN_BUCKET", "clinic/frames"),
        ("FRAMECDN_BUCKET", "ab"),
        ("FRAMECDN_INDEX_CACHE_SECONDS", "-5"),
        ("FRAMECDN_RETRY_AFTER", "0"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        Settings.from_env({variable: value})
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_values_from_flags_and_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="FRAMECDN_WORKERS"):
        Settings().with_overrides(workers=0)
    with pytest.raises(ConfigError, match="FRAMECDN_PORT"):
        Settings().with_overrides(port="8080")  # a string is not a port
    with pytest.raises(ConfigError, match="FRAMECDN_MAX_FRAMES_PER_REQUEST"):
        Settings(max_frames_per_request=True)  # nor is a bool a count


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_booleans(raw: str) -> None:
    assert parse_value(raw, bool, "FRAMECDN_X") is True


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", "OFF"])
def test_false_booleans(raw: str) -> None:
    assert parse_value(raw, bool, "FRAMECDN_X") is False


@pytest.mark.parametrize("raw", ["2", "y", "enabled", "truthy", "-"])
def test_other_booleans_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="FRAMECDN_X"):
        parse_value(raw, bool, "FRAMECDN_X")


def test_secrets_stay_out_of_repr_and_errors() -> None:
    settings = Settings(aws_access_key_id="AKID", aws_secret_access_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)


def test_every_field_has_one_variable_and_a_description_without_its_default() -> None:
    variables = [f.metadata["env"] for f in fields(Settings)]
    assert len(variables) == len(set(variables))
    for f in fields(Settings):
        text = f.metadata["help"]
        assert text and "default" not in text.lower(), f.name


def test_table_and_help_append_the_default_from_the_field() -> None:
    table = environment_table()
    assert "| `FRAMECDN_S3_READ_TIMEOUT` | `15` |" in table
    assert "| `FRAMECDN_CORS_ORIGINS` | `*` |" in table
    assert "| `FRAMECDN_S3_ENDPOINT` | unset |" in table
    assert describe("stream_chunk_bytes").endswith("Default: 262144.")
    assert describe("port") == "Origin port. Default: 8080."
    assert set(ENVIRONMENT) == {line.split("`")[1] for line in table.splitlines()[2:]}


def test_upstream_settings_are_documented_and_its_secrets_never_shown() -> None:
    assert "FRAMECDN_UPSTREAM_URL" in ENVIRONMENT
    settings = Settings.from_env({
        "FRAMECDN_UPSTREAM_URL": "https://pacs.example/dicom-web",
        "FRAMECDN_UPSTREAM_PASSWORD": "pacs-secret-1",
        "FRAMECDN_UPSTREAM_TOKEN": "pacs-token-2",
    })
    assert settings.upstream_url == "https://pacs.example/dicom-web"
    assert "pacs-secret-1" not in repr(settings) and "pacs-token-2" not in repr(settings)
    with pytest.raises(ConfigError, match="FRAMECDN_UPSTREAM_URL"):
        Settings.from_env({"FRAMECDN_UPSTREAM_URL": "pacs.example/dicom-web"})
