"""Stopping a child server: ask it to exit, wait a bounded time, then kill it; always reap it.

One place for what the embedded store, ``framecdn serve``'s fill service and the test and
bench servers (Orthanc, nginx, origins) all need: a child that ignores its stop signal
must not hang the caller, and a killed child must not stay a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout: float, kill_wait: float = 10.0) -> None:
    """SIGTERM ``process``; SIGKILL it if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(kill_wait)


def stop_process_group(
    process: subprocess.Popen[Any],
    timeout: float,
    kill_wait: float = 5.0,
    signum: signal.Signals = signal.SIGTERM,
) -> None:
    """For a child started with ``start_new_session=True``: send ``signum`` to its whole
    process group (SIGCONT too, so that a paused group sees it), and SIGKILL the group if
    the child has not exited within ``timeout`` seconds. Its own children go with it."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signum)
    os.killpg(process.pid, signal.SIGCONT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(kill_wait)
