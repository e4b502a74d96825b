"""``framecdn serve`` as a process: stops on SIGINT/SIGTERM from a script's ``&``, workers too.

(That it refuses to start with a wrong secret or bucket is in test_cli_errors.py.)
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request

import psutil
import pytest

from framecdn.cli.serve import export_settings
from framecdn.framestore.config import Settings
from tests.origin_fixtures import free_port
from tests.processes import running
from tests.test_cli_s3 import ignore_sigint


def wait_healthy(url: str, process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_on_a_signal_even_with_sigint_ignored(s3_store, settings, stop, workers):
    """Exit status 0 after a graceful stop (not -15), and no worker left behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment(prefix=settings.prefix))
    port = free_port()
    command = [sys.executable, "-m", "framecdn", "serve", "--port", str(port)]
    command += ["--workers", str(workers)]
    with running(command, env=env, preexec_fn=ignore_sigint) as process:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= (workers if workers > 1 else 0)  # uvicorn's worker processes

        process.send_signal(stop)
        process.communicate(timeout=30)
        assert process.returncode == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []


def test_serve_passes_flags_to_its_workers_but_never_secrets() -> None:
    settings = Settings(
        bucket="clinic-bucket",
        prefix="clinic",
        port=9000,
        aws_access_key_id="AKIA",
        aws_secret_access_key="s",
    )
    environ: dict[str, str] = {}
    export_settings(settings, environ)
    assert environ["FRAMECDN_BUCKET"] == "clinic-bucket" and environ["FRAMECDN_PORT"] == "9000"
    assert environ["FRAMECDN_PREFIX"] == "clinic"
    assert "AWS_SECRET_ACCESS_KEY" not in environ and "AWS_ACCESS_KEY_ID" not in environ
