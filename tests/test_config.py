"""Settings: read from the environment, checked, documented from one declaration each."""

from __future__ import annotations

from dataclasses import fields

import pytest

from framecdn.errors import ConfigError
from framecdn.framestore.config import (
    ENVIRONMENT,
    SECTIONS,
    Settings,
    describe,
    environment_table,
    http_url,
    parse_value,
    redact_userinfo,
)

#: Every setting that holds a URL: S3 endpoints, upstream, fill, Orthanc, JWKS, ...
URL_VARIABLES = [f.metadata["env"] for f in fields(Settings) if f.metadata["check"] is http_url]


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


def test_every_url_setting_is_checked() -> None:
    assert len(URL_VARIABLES) >= 7
    assert {"FRAMECDN_S3_ENDPOINT", "FRAMECDN_ORTHANC_URL", "FRAMECDN_AUTH_JWKS_URL"} <= set(
        URL_VARIABLES
    )


@pytest.mark.parametrize("variable", URL_VARIABLES)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (" http://h.example:8042", "spaces or control characters"),
        ("http://h.example:8042\n", "spaces or control characters"),
        ("http://h.exa\tmple:8042", "spaces or control characters"),
        ("http://h.example:80\x00", "spaces or control characters"),
        ("http://h.example:99999", "port"),
        ("http://h.example:0", "port"),
        ("http://h.example:", "port"),
        ("http://h.example:x1", "port"),
        ("http://h..example", "host"),
        ("http://h/x$.example", None),  # a path may hold what a host may not
        ("http://[::1:8042", "not"),
        ("http://u:pw@/", "host"),
    ],
)
def test_url_settings_are_checked_strictly(variable: str, value: str, problem: str | None) -> None:
    if problem is None:
        Settings.from_env({variable: value})
        return
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}=") and problem in message, message
    assert "\n" not in message


@pytest.mark.parametrize("variable", URL_VARIABLES)
def test_no_url_password_in_a_refusal(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: "http://user:Pa55w0rd@h.example:99999/x"})
    assert "Pa55w0rd" not in str(caught.value) and "user" not in str(caught.value)
    assert "***@h.example" in str(caught.value)


def test_a_refused_override_names_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^--url=' http://o:8042' ") as caught:
        Settings().with_overrides({"orthanc_url": "--url"}, orthanc_url=" http://o:8042")
    assert "FRAMECDN_ORTHANC_URL" not in str(caught.value)


def test_redact_userinfo() -> None:
    assert redact_userinfo("at http://u:p@w@h:1/x and https://h/y@z") == (
        "at http://***@h:1/x and https://h/y@z"
    )


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


def test_settings_are_their_sections_and_each_setting_is_in_one() -> None:
    """A setting declared in two sections would silently become one field: refused here."""
    declared = [name for section in SECTIONS for name in section.__dataclass_fields__
                if name in vars(section).get("__annotations__", {})]
    assert len(declared) == len(set(declared))
    assert sorted(declared) == sorted(f.name for f in fields(Settings))
    assert all(issubclass(Settings, section) for section in SECTIONS)
    assert [f.name for f in fields(Settings)][:3] == ["s3_endpoint", "s3_public_endpoint",
                                                      "bucket"]  # storage first


def test_a_site_reads_its_subprefix_under_the_prefix() -> None:
    """The one place a site's key prefix is made (the origin's scope and the receiver)."""
    from framecdn.framestore.config import Site

    assert Site.parse("north").prefix_under("") == "north/"
    assert Site.parse("south=clinic-s/").prefix_under("/shared") == "shared/clinic-s/"
    settings = Settings.from_env({"FRAMECDN_AUTH_SITES": "a, b=x/y", "FRAMECDN_PREFIX": "p"})
    assert [site.prefix_under(settings.prefix) for site in settings.sites] == ["p/a/", "p/x/y/"]


def test_a_calling_ae_title_must_send_to_a_configured_site() -> None:
    with pytest.raises(ConfigError, match="not in FRAMECDN_AUTH_SITES"):
        Settings.from_env({"FRAMECDN_RECEIVE_CALLING_AES": "PACS=nowhere"})
    with pytest.raises(ConfigError, match="AE title that is not 1-16 printable"):
        Settings.from_env({"FRAMECDN_RECEIVE_CALLING_AES": "WAY-TOO-LONG-AE-TITLE"})
    ok = Settings.from_env(
        {"FRAMECDN_AUTH_SITES": "north", "FRAMECDN_RECEIVE_CALLING_AES": "PACS=north,CT1"}
    )
    assert ok.receive_calling_aes == ("PACS=north", "CT1")
