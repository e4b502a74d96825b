"""Where instances come from: one protocol for the PACS link and for files.

A :class:`Source` writes one instance's Part 10 file, as stored, into a file the caller
opened; the fill (:mod:`framecdn.ingest.fill`), ``framecdn verify`` (its reference and
its repair) and the Orthanc follower's lookups all take one. Today's sources: the
upstream's WADO-RS (:class:`~framecdn.ingest.dicomweb_source.DicomwebSource`), an
Orthanc's REST API (:class:`~framecdn.ingest.orthanc.OrthancSource`) and files on disk
(:class:`~framecdn.ingest.references.SourceFiles`).

Their failures are sorted alike: :class:`InstanceGone` (the source lacks it: pass
over), :class:`IncompleteInstance` (the answer broke off: try again), any other
:class:`~framecdn.errors.SourceError` (the source is failing), and
:class:`~framecdn.errors.Cancelled` when the caller asked to stop. The HTTP sources
describe a transport failure with :func:`describe`, never with the URL (it may carry
credentials).
"""

from __future__ import annotations

import threading
from typing import BinaryIO, Protocol

import httpx

from framecdn.errors import SourceError
from framecdn.framestore.keys import InstanceKey


class InstanceGone(SourceError):
    """The source does not have the instance (a 404, no such file)."""


class IncompleteInstance(SourceError):
    """The answer ended (or broke) before the whole file arrived."""


class Source(Protocol):
    """Where instances come from (the upstream PACS, an Orthanc, files)."""

    def download(
        self, key: InstanceKey, into: BinaryIO, *, cancelled: threading.Event | None = None
    ) -> int:
        """Write the instance's Part 10 file into ``into`` and return its size in bytes.

        Raises :class:`InstanceGone`, :class:`IncompleteInstance`, another
        :class:`~framecdn.errors.SourceError`, or :class:`~framecdn.errors.Cancelled`
        once ``cancelled`` is set.
        """
        ...


def describe(exc: httpx.HTTPError) -> str:
    """A short phrase for a transport error ("is unreachable"), without the URL."""
    if isinstance(exc, httpx.ConnectError):
        return "is unreachable (connection refused or no route)"
    if isinstance(exc, httpx.TimeoutException):
        return "did not answer in time"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "closed the connection mid-answer"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "broke the connection"
    return f"failed ({type(exc).__name__})"
