"""The error of a file that cannot be split: the one reason, in one line, a file is refused."""

from __future__ import annotations

from framecdn.errors import FramecdnError

#: Longer reasons are cut: they end up in a terminal line and a log record.
MAX_REASON = 400


class InvalidInstance(FramecdnError, ValueError):
    """One-line reason why a file cannot be ingested (``str(exc)`` is shown to the user).

    Reasons quote bytes of the file (a UID, a value); control characters in them are
    escaped here, so a reason is always one printable line whatever the file holds.
    """

    def __init__(self, reason: str) -> None:
        printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
        if len(printable) > MAX_REASON:
            printable = printable[: MAX_REASON - 3] + "..."
        super().__init__(printable)
