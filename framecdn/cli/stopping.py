"""How the long-running commands (``s3``, ``serve``, ``demo``) are told to stop.

A shell starts a background job (``cmd &`` in a script) with SIGINT *ignored*, and
Python keeps an ignored SIGINT ignored. So these commands install their handlers
explicitly: SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread,
the one clean path that stops the origin and then the store.
"""

from __future__ import annotations

import signal
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (``kill``, systemd, ``docker stop``) raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def ignore_signals() -> None:
    """Ignore repeats while shutting down (a terminal's Ctrl-C may arrive twice)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
