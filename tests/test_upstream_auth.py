"""The Authorization header for the upstream, read from a credentials file (pure functions)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from framecdn.errors import ConfigError
from framecdn.framestore.config import Settings
from framecdn.framestore.upstream_auth import upstream_authorization


def from_file(path: Path) -> str | None:
    return upstream_authorization(Settings(upstream_credentials_file=str(path)))


def test_a_file_holds_user_and_password_or_a_bearer_token(tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("reader:s3cret:with-colon\n")
    assert from_file(secret) == "Basic " + base64.b64encode(b"reader:s3cret:with-colon").decode()
    secret.write_text("  bearer abc.def  \n")
    assert from_file(secret) == "Bearer abc.def"


@pytest.mark.parametrize(
    ("content", "private"),
    [("", None), ("no-colon-here", "no-colon-here"), (":hunter2", "hunter2"),
     ("Bearer ", None), ("a:b\nc:d", "c:d")],
)
def test_a_file_of_another_form_is_refused_without_echoing_it(
    tmp_path: Path, content: str, private: str | None
) -> None:
    secret = tmp_path / "credentials"
    secret.write_text(content)
    with pytest.raises(ConfigError) as refused:
        from_file(secret)
    message = str(refused.value)
    assert str(secret) in message and "user:password or Bearer <token>" in message
    assert "\n" not in message and (private is None or private not in message)


def test_an_unreadable_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "credentials"
    with pytest.raises(ConfigError) as refused:
        from_file(missing)
    assert str(refused.value) == (
        f"cannot read the upstream credentials file {missing}: No such file or directory"
    )
