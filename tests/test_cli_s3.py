"""``framecdn s3``: a real store in the foreground, usable from its printed exports, gone on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import make_client


def _read_exports(process: subprocess.Popen, timeout: float = 60) -> dict[str, str]:
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("export "):
            name, _, value = line[len("export ") :].strip().partition("=")
            exports[name] = value
        if line.startswith("# data:"):
            return exports
    raise AssertionError(f"no exports printed; got {exports}")


def test_s3_command_serves_a_checked_store_and_stops_on_ctrl_c(tmp_path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "framecdn", "s3", "--data-dir", str(tmp_path / "s3")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        exports = _read_exports(process)
        settings = Settings.from_env(exports)
        assert settings.s3_endpoint.startswith("http://127.0.0.1:")
        client = make_client(settings)
        client.put_object(Bucket=settings.bucket, Key="hello", Body=b"frame")
        assert client.get_object(Bucket=settings.bucket, Key="hello")["Body"].read() == b"frame"
        forged = make_client(settings.with_overrides(aws_secret_access_key="guess"))
        with pytest.raises(ClientError):
            forged.get_object(Bucket=settings.bucket, Key="hello")
        weed = subprocess.run(
            ["pgrep", "-f", f"weed mini -dir={tmp_path / 's3'}"], capture_output=True, text=True
        ).stdout.split()
        assert weed, "the store runs as a weed process"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert process.returncode == 0
    time.sleep(0.5)
    leftover = subprocess.run(
        ["pgrep", "-f", f"weed mini -dir={tmp_path / 's3'}"], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []
