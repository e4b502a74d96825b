"""The one error root of framecdn, below every other module.

Every exception class framecdn defines derives from :class:`FramecdnError`
(``tests/test_error_tree.py`` enumerates them), so that anything framecdn expects to
go wrong in ordinary use (a missing bucket, a wrong secret, a closed port, a bad
file, a bad flag, a request it refuses) is caught in one place per face: the CLI
catches it once, prints its ``str()`` (one line a person can act on) and exits with
``exit_code``; ``--verbose`` adds the traceback. Anything else escaping to the CLI is
a bug and keeps its traceback.

The tree, by what the catcher does about it::

    FramecdnError                  exit 1
    ├── Refusal                    the caller asked for what cannot be done as given:
    │   │                          exit 2, HTTP ``status`` (a 4xx) with the message
    │   └── UsageError             a command line or setting refused (exit 2)
    │       └── ConfigError
    ├── BackendError               a service framecdn relies on failed: S3, the upstream
    │   │                          PACS, a source of instances; ``status`` is the 5xx the
    │   │                          origin answers, ``kind`` the metric label
    │   ├── StoreError ── ObjectMissing, ...
    │   ├── UpstreamError
    │   └── SourceError
    ├── Cancelled                  the caller asked to stop while work was under way
    └── MissingExtra, ...

A class is also a :class:`ValueError` exactly when it says a value does not parse
(the ``Invalid*`` classes): code that parses with ``int()`` or pydicom alongside
catches both alike.
"""

from __future__ import annotations

from collections.abc import Mapping


class FramecdnError(Exception):
    """An expected failure, described in one line for the user (exit status 1)."""

    exit_code = 1


class Refusal(FramecdnError):
    """A request refused as given: ``status`` (4xx) is the origin's answer, exit 2 the CLI's.

    ``headers`` go out with the answer (``Content-Range``, ``WWW-Authenticate``) and
    ``details`` are extra fields of its JSON body (``available`` media types). The
    message describes the caller's own request, so it is safe to show to the caller.
    """

    exit_code = 2
    status = 400

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.details: dict[str, object] = dict(details or {})


class UsageError(Refusal):
    """The command was asked for something it cannot do as given (exit status 2)."""


class ConfigError(UsageError):
    """A setting (environment variable or flag) has a value framecdn refuses."""


class BackendError(FramecdnError):
    """A service framecdn relies on failed or refused (the origin answers ``status``, 5xx).

    The message is for the log: it may name internal hosts, so the origin never
    shows it to a client.
    """

    status = 502
    kind = "error"


class StoreError(BackendError):
    """The object store failed or refused a request (unreachable, denied, no bucket)."""


class ObjectMissing(StoreError):
    """The store answered that this object does not exist: the only "missing" there is.

    Nothing else (a timeout, a denied read, a 5xx) may be taken to mean missing.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key}")
        self.key = key


class UpstreamError(BackendError):
    """The upstream PACS could not answer (the origin answers 502, opaque)."""


class SourceError(BackendError):
    """A source of instances (Orthanc, a DICOMweb server) could not give what was asked."""


class Cancelled(FramecdnError):
    """The caller asked to stop while a download or an ingest was under way.

    Raised where the work notices (between chunks, between frames) so that what it
    began is cleaned up on the way out; whoever asked to stop expects it.
    """


class MissingExtra(FramecdnError):
    """An optional part of framecdn (an extra of the package) is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} is not installed: pip install 'framecdn[{extra}]'")
        self.extra = extra
