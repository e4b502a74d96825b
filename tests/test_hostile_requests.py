"""Requests made to hurt: huge or countless headers, odd digits, UIDs with control characters.

One hostile client must not slow the others, grow the origin, reach a bucket key, or
get anything but a 4xx back (never a 500 with a traceback in the log, never its own
unbounded input echoed). Real ``framecdn serve`` processes and real sockets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from framecdn.origin.ranges import parse_range
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import Expected, free_port, ingest, run_origin
from tests.processes import running
from tests.test_serve import wait_healthy

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def instance(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    path = tmp_path_factory.mktemp("hostile") / "tomo.dcm"
    # Short UIDs: one with a newline added is still within 64 characters.
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    write_tomosynthesis(path, frames=2, rows=32, columns=32, seed=4, **uids)
    return ingest(path, module_settings)


@pytest.fixture(scope="module")
def served(module_settings: Settings, instance: Expected):
    with run_origin(module_settings) as running_origin:
        yield running_origin


@pytest.fixture(scope="module")
def serve_process(s3_store: EmbeddedS3, module_settings: Settings, instance: Expected) -> Iterator[
    tuple[str, psutil.Process]
]:
    """``framecdn serve`` in its own process (its memory is its own): base URL, process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment(prefix=module_settings.prefix))
    port = free_port()
    command = [sys.executable, "-m", "framecdn", "serve", "--port", str(port)]
    with running(command, env=env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(f"{base}/healthz", process)
        yield base, psutil.Process(process.pid)


def raw_request(port: int, head: bytes, *, timeout: float = 60) -> bytes:
    """Send ``head`` as one request on a fresh connection; what came back (maybe nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may refuse before all is sent
            sock.sendall(head)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def huge_accept_request(path: str, size: int) -> bytes:
    accept = b"application/" + b"x" * size
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAccept: " + accept + b"\r\n\r\n"


def peak_rss(process: psutil.Process) -> int:
    """The process's high-water resident size (VmHWM), in bytes."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_huge_header_neither_stalls_other_clients_nor_grows_the_origin(
    serve_process: tuple[str, psutil.Process], instance: Expected
) -> None:
    base, process = serve_process
    port = int(base.rsplit(":", 1)[1])
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base}/healthz").status_code == 200
    before = peak_rss(process)
    path = (
        f"/dicom-web/studies/{instance.study}/series/{instance.series}"
        f"/instances/{instance.sop}/frames/1"
    )
    answers: list[bytes] = []
    hostile = threading.Thread(
        target=lambda: answers.append(raw_request(port, huge_accept_request(path, 8 * MiB)))
    )
    worst = 0.0
    with httpx.Client(timeout=30) as http:
        hostile.start()
        while hostile.is_alive():
            started = time.monotonic()
            assert http.get(f"{base}/healthz").status_code == 200
            worst = max(worst, time.monotonic() - started)
        hostile.join()
    assert worst < 1.0, f"/healthz took {worst:.2f} s while a huge header came in"
    assert answers[0] == b"" or answers[0].startswith(b"HTTP/1.1 431 ")
    assert peak_rss(process) - before < 32 * MiB


def test_header_over_the_limit_is_431(served, instance: Expected) -> None:
    port = int(served.base.rsplit(":", 1)[1])
    path = served.frames_url(instance, "1").removeprefix(served.base)
    answer = raw_request(port, huge_accept_request(path, 100 * 1024))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert len(answer) < 1024  # nothing of the header comes back


def test_too_many_headers_is_431(served) -> None:
    port = int(served.base.rsplit(":", 1)[1])
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(150))
    answer = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_headers_under_the_limits_are_served(served, instance: Expected) -> None:
    headers = {f"X-Padding-{n}": "v" * 200 for n in range(60)}
    with httpx.Client(timeout=30) as http:
        response = http.get(served.frames_url(instance, "1"), headers=headers)
    assert response.status_code == 200


def test_406_does_not_echo_the_accept_header(served, instance: Expected) -> None:
    accept = "image/png; q=1, " + "x" * 20000
    with httpx.Client(timeout=30) as http:
        response = http.get(served.frames_url(instance, "1"), headers={"Accept": accept})
    assert response.status_code == 406
    assert len(response.content) < 2048
    assert "x" * 300 not in response.text


@pytest.mark.parametrize(
    "value", [b"bytes=\xb2-", b"bytes=0-\xb9", b"bytes=-\xb3", b"bytes=\xd9\xa1-"]
)
def test_range_with_non_ascii_digits_is_ignored(served, instance: Expected, value: bytes) -> None:
    with httpx.Client(timeout=30) as http:
        response = http.get(
            served.frames_url(instance, "1"),
            headers={"Accept": "application/octet-stream", "Range": value},
        )
    assert response.status_code == 200
    assert response.content == instance.frames[0]


@pytest.mark.parametrize(
    "header", ["bytes=\u00b2-", "bytes=0-\u00b9", "bytes=\u0661-", "bytes=1\u0662-"]
)
def test_parse_range_takes_ascii_digits_only(header: str) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize("where", ["study", "series", "instance"])
def test_uid_with_a_trailing_newline_is_400(served, instance: Expected, where: str) -> None:
    uids = {"study": instance.study, "series": instance.series, "instance": instance.sop}
    uids[where] += "%0A"
    url = (
        f"{served.root}/studies/{uids['study']}/series/{uids['series']}"
        f"/instances/{uids['instance']}"
    )
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{url}/frames/1").status_code == 400
        assert http.get(f"{url}/metadata").status_code == 400


def test_frame_number_with_a_trailing_newline_is_400(served, instance: Expected) -> None:
    with httpx.Client(timeout=30) as http:
        assert http.get(served.frames_url(instance, "1%0A")).status_code == 400
