"""The real ``framecdn`` command in a child process, pointed at a test's store and prefix.

Tests that need the whole entry point (argument parsing, exit codes, what reaches stdout
and stderr) run ``python -m framecdn`` rather than calling ``main`` in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys

from framecdn.framestore.config import Settings


def framecdn_command(*args: str) -> list[str]:
    """``framecdn ARGS`` run by this interpreter (the venv's, without needing its PATH)."""
    return [sys.executable, "-m", "framecdn", *args]


def cli_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus the store, bucket, prefix and keys of ``settings``."""
    return dict(
        os.environ,
        FRAMECDN_S3_ENDPOINT=settings.s3_endpoint,
        FRAMECDN_BUCKET=settings.bucket,
        FRAMECDN_PREFIX=settings.prefix,
        AWS_ACCESS_KEY_ID=settings.aws_access_key_id,
        AWS_SECRET_ACCESS_KEY=settings.aws_secret_access_key,
    )


def run_framecdn(
    settings: Settings, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``framecdn ARGS`` to its end, output captured; a hang past ``timeout`` fails the test
    (``TimeoutExpired``) and the child is killed."""
    return subprocess.run(
        framecdn_command(*args), env=cli_environment(settings), capture_output=True, text=True,
        timeout=timeout,
    )
