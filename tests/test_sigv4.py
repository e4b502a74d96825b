"""Our SigV4 query signer: byte-for-byte what botocore signs, and accepted by a real S3.

botocore is the reference (same time, credentials and keys, so the same signature);
SeaweedFS with identities configured checks the signatures for real.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.config import Config

from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import Presigner, resolve_credentials
from framecdn.framestore.sigv4 import SigningKeys, host_header, presign, signing_key

SIGNED_AT = datetime(2027, 3, 14, 15, 0, 0, tzinfo=UTC)  # a window start (3600 s)
KEYS = [
    "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1",
    "clinic a/studies/1.2/metadata",
    "odd+key=with&reserved?chars#and;more",
    "unicode/Ärztin/βeta/frames/7",
    "tilde~star*paren(1)!quote'",
    "percent%20already/encoded",
    "a//double/slash/",
]
#: SeaweedFS (like a file system) folds "//" and serves "x/" as a directory: not a signing matter.
STORE_KEYS = [key for key in KEYS if "//" not in key]


def botocore_url(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, key: str, keys: SigningKeys, expires: int
) -> str:
    """botocore's own presigned GET of ``key`` at SIGNED_AT (path-style, like ours)."""
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda *a, **k: SIGNED_AT.replace(tzinfo=None)
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-central-1",
        aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key,
        aws_session_token=keys.token,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": "frames", "Key": key}, ExpiresIn=expires
    )


def ours(endpoint: str, key: str, keys: SigningKeys) -> str:
    presigner = Presigner(endpoint, "frames", keys, "eu-central-1", window_seconds=3600)
    return presigner.url(key, now=SIGNED_AT.timestamp() + 1799)  # same window


def split(url: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.netloc, parts.path, parse_qs(parts.query, keep_blank_values=True)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8333", "https://s3.example.org", "https://S3.Example.org:443"]
)
@pytest.mark.parametrize("token", [None, "session/token+with=odd chars"])
def test_same_url_as_botocore(
    monkeypatch: pytest.MonkeyPatch, key: str, endpoint: str, token: str | None
) -> None:
    keys = SigningKeys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    expected = botocore_url(monkeypatch, endpoint, key, keys, expires=7200)
    got = ours(endpoint, key, keys)
    assert split(got) == split(expected)
    signature = parse_qs(urlsplit(expected).query)["X-Amz-Signature"][0]
    assert got.endswith(f"&X-Amz-Signature={signature}")


def test_signing_key_matches_the_aws_documentation_example() -> None:
    """The HMAC chain from AWS's SigV4 documentation (secret, 20150830, us-east-1, iam)."""
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"


def test_host_header_drops_default_ports_only() -> None:
    assert host_header("https://S3.Example.org:443/b/k") == "s3.example.org"
    assert host_header("http://127.0.0.1:80/b") == "127.0.0.1"
    assert host_header("http://127.0.0.1:8333/b") == "127.0.0.1:8333"
    assert host_header("http://[::1]:9000/b") == "[::1]:9000"


def test_expiry_is_bounded_like_sigv4() -> None:
    keys = SigningKeys("a", "b")
    with pytest.raises(ValueError, match="expires"):
        presign("https://s3.example.org/b/k", keys, region="r", signed_at=SIGNED_AT, expires=0)
    with pytest.raises(ValueError, match="expires"):
        presign(
            "https://s3.example.org/b/k", keys, region="r", signed_at=SIGNED_AT,
            expires=7 * 24 * 3600 + 1,
        )


def test_presigned_url_is_stable_within_its_window(settings: Settings) -> None:
    presigner = Presigner.public(settings.with_overrides(presign_window_seconds=600))
    start = 1_800_000_000 - 1_800_000_000 % 600
    url = presigner.url("a/b", now=start + 1)
    assert url == presigner.url("a/b", now=start + 599)
    assert url != presigner.url("a/b", now=start + 600)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["1200"]  # two windows


@pytest.mark.parametrize("key", STORE_KEYS)
def test_real_store_accepts_ours_and_refuses_tampering(
    s3_client, settings: Settings, key: str
) -> None:
    object_key = f"{settings.prefix}/{key}"
    body = key.encode()
    s3_client.put_object(Bucket=settings.bucket, Key=object_key, Body=body)
    url = Presigner.public(settings).url(object_key)
    with urllib.request.urlopen(url) as response:
        assert response.read() == body
    tampered = [
        url.replace("X-Amz-Signature=", "X-Amz-Signature=0"),  # another signature
        url.replace(settings.prefix, settings.prefix + "x", 1),  # another object
        url.replace("X-Amz-Expires=", "X-Amz-Expires=9"),  # a longer life than signed
    ]
    for forged in tampered:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(forged)
        assert caught.value.code in (403, 400), forged


def test_real_store_refuses_a_wrong_secret(s3_client, settings: Settings) -> None:
    object_key = f"{settings.prefix}/secret-check"
    s3_client.put_object(Bucket=settings.bucket, Key=object_key, Body=b"x")
    forged = Presigner.public(settings.with_overrides(aws_secret_access_key="forged"))
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(forged.url(object_key))
    assert caught.value.code == 403
    assert resolve_credentials(settings).secret_key == settings.aws_secret_access_key
