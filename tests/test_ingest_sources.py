"""Sources that are not files: a FIFO, a socket, a device must be reported, never waited on.

Opening a FIFO for reading blocks until a writer comes, so one stray FIFO in a PACS
folder used to hang ``framecdn ingest`` forever. Everything here runs in a child
process with a bounded timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framecdn.synthetic import write_tomosynthesis

TIMEOUT = 60


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        FRAMECDN_S3_ENDPOINT=settings.s3_endpoint,
        FRAMECDN_BUCKET=settings.bucket,
        FRAMECDN_PREFIX=settings.prefix,
        AWS_ACCESS_KEY_ID=settings.aws_access_key_id,
        AWS_SECRET_ACCESS_KEY=settings.aws_secret_access_key,
    )
    return subprocess.run(
        [sys.executable, "-m", "framecdn", *args], env=env, capture_output=True, text=True,
        timeout=TIMEOUT,  # a hang fails the test (TimeoutExpired) and the child is killed
    )


@pytest.fixture
def folder_with_a_fifo(tmp_path: Path):
    folder = tmp_path / "pacs"
    folder.mkdir()
    write_tomosynthesis(folder / "a.dcm", frames=2, rows=8, columns=8)
    os.mkfifo(folder / "b.fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "c.sock"))
    try:
        yield folder
    finally:
        server.close()


def test_fifo_and_socket_in_a_folder_are_reported_not_waited_on(
    settings, folder_with_a_fifo: Path
) -> None:
    done = _cli(settings, "ingest", "--no-progress", str(folder_with_a_fifo))
    failed = sorted(line for line in done.stderr.splitlines() if line.startswith("FAILED"))
    assert failed == [
        f"FAILED {folder_with_a_fifo / 'b.fifo'}: not a regular file (a FIFO)",
        f"FAILED {folder_with_a_fifo / 'c.sock'}: not a regular file (a socket)",
    ]
    assert "1 instance ingested" in done.stdout and "2 failed" in done.stdout
    assert done.returncode == 1


def test_fifo_named_on_the_command_line_is_refused(settings, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    done = _cli(settings, "ingest", "--no-progress", str(tmp_path / "pipe"))
    assert f"FAILED {tmp_path / 'pipe'}: not a regular file (a FIFO)" in done.stderr
    assert done.returncode == 1


_OPEN_CHILD = textwrap.dedent(
    """
    import sys
    from framecdn.ingest.splitter import InvalidInstance, open_instance
    try:
        with open_instance(sys.argv[1]):
            print("OPENED")
    except InvalidInstance as exc:
        print(exc)
    """
)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_splitter_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "pipe", "device": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_CHILD, str(path)], capture_output=True, text=True,
        timeout=TIMEOUT, check=True,
    )
    expected = {"fifo": "a FIFO", "device": "a character device", "directory": "a directory"}
    assert done.stdout.strip() == f"not a regular file ({expected[kind]})"
