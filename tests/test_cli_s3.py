"""``framecdn s3``: a real store in the foreground, usable from its exports, gone on a signal.

It is started the way ``cmd &`` in a script starts it (SIGINT ignored), and must still stop
on SIGINT and on SIGTERM, taking its ``weed`` process with it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import make_client
from tests.processes import leftovers, running


def ignore_sigint() -> None:
    """What a non-interactive shell does to a job started with ``&``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_until(process: subprocess.Popen, done: str, timeout: float = 90) -> list[str]:
    """Lines of stdout up to and including the first that starts with ``done``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(done):
            return lines
    raise AssertionError(f"never printed {done!r}; got {''.join(lines)}")


def exports(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = line[len("export ") :].strip().partition("=")
            found[name] = value
    return found


def wait_gone(marker: str, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leftovers(marker)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_s3_command_serves_a_checked_store_and_stops_on_a_signal(tmp_path, stop) -> None:
    data_dir = tmp_path / "s3"
    marker = f"-dir={data_dir}"
    command = [sys.executable, "-m", "framecdn", "s3", "--data-dir", str(data_dir)]
    with running(command, marker=marker, stderr=subprocess.STDOUT,
                 preexec_fn=ignore_sigint) as process:
        settings = Settings.from_env(exports(read_until(process, "# data:")))
        assert settings.s3_endpoint.startswith("http://127.0.0.1:")
        client = make_client(settings)
        client.put_object(Bucket=settings.bucket, Key="hello", Body=b"frame")
        assert client.get_object(Bucket=settings.bucket, Key="hello")["Body"].read() == b"frame"
        forged = make_client(settings.with_overrides(aws_secret_access_key="guess"))
        with pytest.raises(ClientError):
            forged.get_object(Bucket=settings.bucket, Key="hello")
        assert leftovers(marker), "the store runs as a weed process"

        process.send_signal(stop)
        process.wait(30)
        assert process.returncode == 0
        assert wait_gone(marker) == []
