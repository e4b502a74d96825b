"""Revoking an API key needs no restart: the keys file is re-read on SIGHUP and on change.

A bad new file (a typo while editing, a half-written copy) keeps the keys in use and
says why; a good one replaces them at once. First with the file alone (a settable
clock for the change check), then through ``framecdn serve`` and a real SIGHUP.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.origin.apikeys import CHANGE_CHECK_SECONDS, ApiKeysFile, digest_line, new_api_key
from tests.auth_fixtures import two_clinics
from tests.origin_fixtures import free_port
from tests.processes import running
from tests.test_access_log import frame_path, serve_environment
from tests.test_serve import wait_healthy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replace_file(path: Path, text: str) -> None:
    """What an operator's script should do: write a new file, rename it over the old."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def test_a_changed_file_is_read_again_and_a_bad_one_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_key, new_key = new_api_key(), new_api_key()
    path = tmp_path / "api-keys"
    path.write_text(digest_line(old_key, "a", "bridge") + "\n")
    clock = Clock()
    keys = ApiKeysFile(str(path), clock=clock)
    assert keys.lookup(old_key) is not None and keys.lookup(new_key) is None

    replace_file(path, digest_line(new_key, "a", "bridge") + "\n")  # old_key revoked
    assert keys.lookup(old_key) is not None  # not looked at before the check interval
    clock.now += CHANGE_CHECK_SECONDS
    assert keys.lookup(old_key) is None and keys.lookup(new_key) is not None

    caplog.set_level(logging.INFO, logger="framecdn.origin.apikeys")
    for bad in ("sha256:abc a bridge\n", "sha256:" + "0" * 64 + "\n"):
        path.write_text(bad)  # edited in place, with a typo
        clock.now += CHANGE_CHECK_SECONDS
        assert keys.lookup(new_key) is not None, bad  # the keys in use stay
    path.unlink()
    clock.now += CHANGE_CHECK_SECONDS
    assert keys.lookup(new_key) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # once per bad version, not once a second
    assert all("not reloaded, the 1 keys in use stay" in w for w in warnings), warnings
    assert old_key not in caplog.text and new_key not in caplog.text

    path.write_text(digest_line(old_key, "b", "bridge") + "\n")
    assert keys.reload()  # SIGHUP: no wait for the change check
    assert keys.lookup(new_key) is None and keys.lookup(old_key).sites == ("b",)


def test_sighup_to_serve_revokes_a_key_and_a_malformed_file_changes_nothing(
    s3_store: EmbeddedS3, settings: Settings, tmp_path: Path
) -> None:
    clinics = two_clinics(settings, tmp_path)
    new_key = new_api_key()
    port = free_port()
    command = [sys.executable, "-m", "framecdn", "serve", "--port", str(port)]
    env = serve_environment(s3_store, clinics, FRAMECDN_ACCESS_LOG="off")

    def status(http: httpx.Client, key: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/octet-stream"}
        return http.get(frame_path(clinics.a1), headers=headers).status_code

    def after_hangup(http: httpx.Client, key: str, expected: int) -> None:
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status(http, key) != expected:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)

    with running(command, env=env) as process, httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=30
    ) as http:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        assert status(http, clinics.key_a) == 200 and status(http, new_key) == 401

        # Revoke key_a for a new key, in place, keeping the file's size and time: only
        # SIGHUP can tell the origin (the change check sees nothing).
        stat = clinics.api_keys_file.stat()
        text = clinics.api_keys_file.read_text()
        old_line = digest_line(clinics.key_a, "a", "bridge-a")
        assert old_line in text
        clinics.api_keys_file.write_text(
            text.replace(old_line, digest_line(new_key, "a", "bridge-a"))
        )
        os.utime(clinics.api_keys_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert clinics.api_keys_file.stat().st_size == stat.st_size
        time.sleep(CHANGE_CHECK_SECONDS + 0.1)
        assert status(http, clinics.key_a) == 200  # unchanged as far as a stat can tell
        after_hangup(http, clinics.key_a, 401)
        assert status(http, new_key) == 200 and status(http, clinics.key_all) == 200

        clinics.api_keys_file.write_text("sha256:not-a-digest a bridge-a\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert process.poll() is None  # SIGHUP does not stop the origin
        assert status(http, new_key) == 200 and status(http, clinics.key_a) == 401

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "API keys reloaded" in stderr and "not reloaded, the 3 keys in use stay" in stderr
    assert new_key not in stderr and clinics.key_a not in stderr
