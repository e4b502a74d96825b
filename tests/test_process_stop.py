"""framecdn.process_stop with real child processes: a polite child exits on the signal, a
stubborn one is killed after the timeout, and a group takes its own children with it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from framecdn.process_stop import stop_process, stop_process_group

#: A child that ignores SIGTERM (and SIGQUIT) and starts a grandchild that would outlive it.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def stubborn(**popen: Any) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                               **popen)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_polite_child_stops_on_sigterm_without_waiting_for_the_timeout() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = time.monotonic()
    stop_process(process, timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 20


def test_a_stubborn_child_is_killed_and_reaped_after_the_timeout() -> None:
    process, grandchild = stubborn()
    try:
        stop_process(process, timeout=0.5)
        assert process.returncode == -signal.SIGKILL
    finally:
        if not gone(grandchild):
            psutil.Process(grandchild).kill()


def test_a_stubborn_group_is_killed_with_its_children() -> None:
    process, grandchild = stubborn(start_new_session=True)
    try:
        stop_process_group(process, timeout=0.5, signum=signal.SIGQUIT)
        assert process.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not gone(grandchild):
            assert time.monotonic() < deadline, "the grandchild outlived its group"
            time.sleep(0.05)
    finally:
        if not gone(grandchild):
            psutil.Process(grandchild).kill()


#: A child that handles SIGTERM itself (as SeaweedFS does): it must run to see it.
TIDY = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("ready", flush=True)
time.sleep(600)
"""


def test_a_paused_group_still_sees_its_stop_signal() -> None:
    process = subprocess.Popen([sys.executable, "-c", TIDY], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGSTOP)
    stop_process_group(process, timeout=20)
    assert process.returncode == 3  # its handler ran: not killed after the timeout
    process.stdout.close()


def test_an_exited_child_is_left_alone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    stop_process(process, timeout=1)
    stop_process_group(process, timeout=1)
    assert process.returncode == 0
