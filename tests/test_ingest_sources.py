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
from tests.cli_fixtures import run_framecdn

TIMEOUT = 60


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
    done = run_framecdn(
        settings, "ingest", "--no-progress", str(folder_with_a_fifo), timeout=TIMEOUT
    )
    failed = sorted(line for line in done.stderr.splitlines() if line.startswith("FAILED"))
    assert failed == [
        f"FAILED {folder_with_a_fifo / 'b.fifo'}: not a regular file (a FIFO)",
        f"FAILED {folder_with_a_fifo / 'c.sock'}: not a regular file (a socket)",
    ]
    assert "1 instance ingested" in done.stdout and "2 failed" in done.stdout
    assert done.returncode == 1


def test_fifo_named_on_the_command_line_is_refused(settings, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    done = run_framecdn(
        settings, "ingest", "--no-progress", str(tmp_path / "pipe"), timeout=TIMEOUT
    )
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
