"""The error of a file that cannot be split: the one reason, in one line, a file is refused."""

from __future__ import annotations

from framecdn.errors import FramecdnError


class InvalidInstance(FramecdnError):
    """One-line reason why a file cannot be ingested (``str(exc)`` is shown to the user)."""
