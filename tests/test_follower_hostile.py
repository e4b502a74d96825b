"""``framecdn follow-orthanc`` against URLs and servers that are not what they should be.

The real command in a child process: a mistyped URL (spaces, control characters, a bad
port, credentials in it), a server that answers HTML on every path, the S3 endpoint
given as Orthanc, an Orthanc that is not there with ``--once``. Each ends in one line
naming where the value came from, with no traceback, no secret and a bounded time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.origin_fixtures import http_server

FRAMECDN = str(Path(sys.executable).parent / "framecdn")
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


class _HtmlEverywhere(BaseHTTPRequestHandler):
    """A web server that is not Orthanc: 200 and an HTML page for every request."""

    def do_GET(self) -> None:
        self._page()

    def do_POST(self) -> None:
        self._page()

    def _page(self) -> None:
        body = b"<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    with http_server(_HtmlEverywhere) as url:
        yield url


def follow(s3_store, settings, *argv: str, timeout: float = 60, **env: str):
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRAMECDN_ORTHANC")},
        **s3_store.environment(),
        "FRAMECDN_PREFIX": settings.prefix,
        "FRAMECDN_FOLLOW_RETRY_SECONDS": "0.05",
        "FRAMECDN_FOLLOW_RETRY_MAX_SECONDS": "0.1",
        "FRAMECDN_FOLLOW_POLL_SECONDS": "0.1",
        **env,
    }
    return subprocess.run(
        [FRAMECDN, "follow-orthanc", "--once", *argv],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line, after checking nothing on stderr is a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_server_answering_html_is_not_an_orthanc(s3_store, settings, html_server) -> None:
    result = follow(s3_store, settings, "--url", html_server)
    assert result.returncode == 1, result.stderr
    line = one_line(result)
    assert "is not an Orthanc" in line and "HTML" in line, line


def test_the_s3_endpoint_is_not_an_orthanc(s3_store, settings) -> None:
    result = follow(s3_store, settings, "--url", s3_store.endpoint)
    assert result.returncode == 1, result.stderr
    line = one_line(result)
    assert "is not an Orthanc" in line, line
    assert "refused the credentials" not in result.stderr


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f" {CLOSED}", "spaces or control characters"),
        (f"{CLOSED}\n", "spaces or control characters"),
        ("http://127.0.0.1\t:9", "spaces or control characters"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:0", "port"),
        ("http:///changes", "host"),
    ],
)
@pytest.mark.parametrize("given_by", ["--url", "FRAMECDN_ORTHANC_URL"])
def test_malformed_urls_are_refused_at_start_naming_their_source(
    url, problem, given_by, s3_store, settings
) -> None:
    if given_by == "--url":
        result = follow(s3_store, settings, "--url", url, timeout=30)
    else:
        result = follow(s3_store, settings, timeout=30, FRAMECDN_ORTHANC_URL=url)
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert given_by in line and problem in line, line
    other = "FRAMECDN_ORTHANC_URL" if given_by == "--url" else "--url="
    assert other not in line, line


@pytest.mark.parametrize("given_by", ["--url", "FRAMECDN_ORTHANC_URL"])
def test_no_password_in_the_message_of_a_malformed_url(given_by, s3_store, settings) -> None:
    url = "http://u:S3cr3tPW@127.0.0.1:99999"
    if given_by == "--url":
        result = follow(s3_store, settings, "--url", url, timeout=30)
    else:
        result = follow(s3_store, settings, timeout=30, FRAMECDN_ORTHANC_URL=url)
    assert result.returncode == 2, result.stderr
    assert "S3cr3tPW" not in result.stderr + result.stdout
    assert given_by in one_line(result)


def test_once_gives_up_on_an_orthanc_that_is_not_there(s3_store, settings) -> None:
    result = follow(
        s3_store, settings, "--url", CLOSED, timeout=60, FRAMECDN_FOLLOW_MAX_ATTEMPTS="3"
    )
    assert result.returncode == 1, result.stderr
    line = one_line(result)
    assert "gave up" in line and "after 3 attempts" in line and "unreachable" in line, line
