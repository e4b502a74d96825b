"""Child processes in tests: always stopped, with their own children, even when a test fails.

``running`` starts a command and, on the way out (success, failure or timeout), kills
what is left of it: the process, every descendant it had, and any process whose
command line names ``marker`` (a store in its own session is not a descendant
once its parent is gone, so a unique path such as the test's data directory finds it).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psutil


def _matching(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def leftovers(marker: str) -> list[int]:
    """Pids of live processes whose command line names ``marker``."""
    return [p.pid for p in _matching(marker) if p.is_running() and p.status() != "zombie"]


def kill_all(processes: Sequence[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@contextlib.contextmanager
def running(
    command: Sequence[str], *, marker: str | None = None, **popen: Any
) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(command)`` (text pipes by default) that never outlives the test."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("text", True)
    process = subprocess.Popen(list(command), **popen)
    try:
        yield process
    finally:
        doomed: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            doomed += psutil.Process(process.pid).children(recursive=True)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        if marker is not None:
            doomed += _matching(marker)
        kill_all([p for p in doomed if p.pid != process.pid])
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)


@contextlib.contextmanager
def frozen_when(
    process: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 120
) -> Iterator[None]:
    """Run ``process`` in short slices until ``ready()`` holds, then hold it stopped for the
    body (which cuts it: a signal, a dying store) and let it go on.

    ``ready`` is only asked while the process is stopped, so however slow the look (a
    bucket listing on a loaded machine), the process cannot run on to its end meanwhile:
    a test that means to cut it half-way does.
    """
    deadline = time.monotonic() + timeout
    while True:
        process.send_signal(signal.SIGSTOP)
        if ready():
            break
        process.send_signal(signal.SIGCONT)
        assert process.poll() is None, "the process ended before the point to cut it at"
        assert time.monotonic() < deadline, "the process made no progress"
        time.sleep(0.05)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)
