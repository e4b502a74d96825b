"""Where the access log goes: JSON lines alone on a stream or file of their own.

Each answered request is one JSON object on the ``framecdn.access`` logger (written by
:mod:`framecdn.origin.metrics`). A process that serves (``framecdn serve``, its workers,
the demo) sends those records here, not to the root logger, so the destination holds
nothing but JSON lines: ``jq`` and log collectors read it as it is, and a person's
terminal (stderr: start-up, warnings, the stop line) is not flooded by one line per frame.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

ACCESS_LOGGER = "framecdn.access"
#: Every other log line (stderr), in the command and in its worker processes alike.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def send_access_log(destination: str) -> None:
    """Write access lines, unformatted, to ``destination``: stdout, stderr, off or a file.

    A file is appended to and reopened when rotated (logrotate moves it away); every
    worker process appends whole lines. Calling it again replaces the previous handler.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler: logging.Handler
    if destination == "off":
        handler = logging.NullHandler()
    elif destination in ("stdout", "stderr"):
        handler = logging.StreamHandler(sys.stdout if destination == "stdout" else sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
