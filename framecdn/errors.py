"""The one error root of framecdn, below every other module.

Anything framecdn expects to go wrong in ordinary use (a missing bucket, a wrong
secret, a closed port, a bad file, a bad flag) is raised as a :class:`FramecdnError`
whose ``str()`` is one line a person can act on. The CLI catches it once, prints
that line and exits with ``exit_code``; ``--verbose`` adds the traceback. Anything
else escaping to the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class FramecdnError(Exception):
    """An expected failure, described in one line for the user (exit status 1)."""

    exit_code = 1


class UsageError(FramecdnError):
    """The command was asked for something it cannot do as given (exit status 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A setting (environment variable or flag) has a value framecdn refuses."""


class StoreError(FramecdnError):
    """The object store failed or refused a request (unreachable, denied, no bucket)."""


class ObjectMissing(StoreError):
    """The store answered that this object does not exist: the only "missing" there is.

    Nothing else (a timeout, a denied read, a 5xx) may be taken to mean missing.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key}")
        self.key = key


class MissingExtra(FramecdnError):
    """An optional part of framecdn (an extra of the package) is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed: pip install 'framecdn[{extra}]'")
        self.extra = extra
