"""A small client for the parts of Orthanc's REST API the follower needs.

The change feed (``/changes``), what Orthanc's index knows about an instance, its
series and its study (no file is read for those), and the instance's Part 10 file,
streamed in chunks to a file so a 2 GB instance never sits in memory. A download is
checked against the size and MD5 Orthanc recorded for the file, so an answer cut
short or corrupted is an error here, before anything reaches the bucket.

Failures are sorted by what the caller should do about them:
:class:`OrthancUnavailable` (try again later), :class:`ResourceGone` (deleted: pass
over), :class:`IncompleteDownload` (try again), :class:`CorruptDownload` (the stored
file itself is bad). Messages are one line and never carry the credentials.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Self

import httpx

from framecdn.errors import Cancelled, SourceError
from framecdn.framestore.keys import InstanceKey
from framecdn.ingest.sources import IncompleteInstance, InstanceGone, describe

DOWNLOAD_CHUNK = 1 << 20
#: Orthanc answers at most this many changes per request.
MAX_CHANGES_PER_PAGE = 100


class OrthancError(SourceError):
    """Orthanc could not give what was asked."""


class OrthancUnavailable(OrthancError):
    """Orthanc is unreachable, timed out, refused the credentials or answered 5xx."""


class OrthancRefused(OrthancUnavailable):
    """Orthanc answered 401 or 403: the credentials are wrong (or lack a permission)."""


class NotOrthanc(OrthancError):
    """The server's answers are not Orthanc's (an HTML page, an S3 endpoint's XML, ...)."""


class ResourceGone(OrthancError, InstanceGone):
    """Orthanc answered 404: the resource was deleted (or never existed)."""


class IncompleteDownload(OrthancError, IncompleteInstance):
    """The file's answer ended before all its bytes arrived (connection cut, short body)."""


class CorruptDownload(OrthancError):
    """A complete answer whose bytes do not match the size or MD5 Orthanc recorded."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of Orthanc's change log."""

    seq: int
    change_type: str  # NewInstance, StableSeries, Deleted, ...
    resource_type: str  # Instance, Series, Study, Patient
    resource_id: str  # Orthanc's identifier, not a DICOM UID


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: tuple[Change, ...]
    done: bool  # no more changes after ``last`` for now
    last: int  # Seq of the last change returned, or the newest Seq when none were


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What Orthanc's index holds about an instance (no file read)."""

    orthanc_id: str
    sop_instance_uid: str
    number_of_frames: int
    series_id: str

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> InstanceInfo:
        tags = answer.get("MainDicomTags", {})
        return cls(
            orthanc_id=str(answer["ID"]),
            sop_instance_uid=str(tags.get("SOPInstanceUID", "")),
            number_of_frames=_int_or(tags.get("NumberOfFrames"), 1),
            series_id=str(answer["ParentSeries"]),
        )


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    orthanc_id: str
    series_instance_uid: str
    modality: str
    study_id: str


@dataclass(frozen=True, slots=True)
class StudyInfo:
    orthanc_id: str
    study_instance_uid: str
    study_date: str  # YYYYMMDD, or "" when the study has none


@dataclass(frozen=True, slots=True)
class StoredFile:
    """The DICOM attachment as Orthanc stored it: its id, size and MD5 (uncompressed)."""

    uuid: str
    size: int
    md5: str  # "" when Orthanc was configured not to record MD5s

    @property
    def file_name(self) -> str:
        """The name Orthanc gives the file in its Content-Disposition."""
        return f"{self.uuid}.dcm"


class OrthancClient:
    """One Orthanc server's REST API. Thread-safe (one connection pool shared by threads)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
        max_connections: int = 16,
    ) -> None:
        self.url = url.rstrip("/")
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._http = httpx.Client(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OrthancClient({self.url!r})"

    # Requests ----------------------------------------------------------------
    def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._json(self._request("GET", path, params=params), path)

    def _json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._not_orthanc(response, path) from None

    def _not_orthanc(self, response: httpx.Response, path: str) -> NotOrthanc:
        return NotOrthanc(
            f"the server at {self.url} is not an Orthanc: {path} answered "
            f"{response.status_code} with {_body_kind(response)}, not Orthanc's JSON "
            "(is the URL Orthanc's REST root?)"
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: str | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method, path, params=params, json=json, content=content
            )
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"Orthanc at {self.url} {describe(exc)} ({path})") from exc
        self._check(response, path)
        return response

    def _check(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if 400 <= status < 500:
            response.read()  # a streamed answer too: an error's body is short
            if not _looks_like_orthanc(response):
                raise self._not_orthanc(response, path)
        if status == 404:
            raise ResourceGone(f"Orthanc at {self.url} has no {path} (404)")
        if status in (401, 403):
            raise OrthancRefused(
                f"Orthanc at {self.url} refused the credentials ({status}) for {path}: check "
                "FRAMECDN_ORTHANC_USERNAME / FRAMECDN_ORTHANC_PASSWORD or --credentials-file"
            )
        if status >= 400:
            raise OrthancUnavailable(f"Orthanc at {self.url} answered {status} for {path}")

    # The server ----------------------------------------------------------------
    def system(self) -> dict[str, Any]:
        """``/system``: name and version; the cheapest authenticated request."""
        answer = self._get_json("/system")
        if not isinstance(answer, dict) or "ApiVersion" not in answer:
            raise NotOrthanc(
                f"the server at {self.url} is not an Orthanc: /system answered JSON without "
                "Orthanc's ApiVersion (is the URL Orthanc's REST root?)"
            )
        return answer

    def instance_count(self) -> int:
        return int(self._get_json("/statistics")["CountInstances"])

    # The change feed -------------------------------------------------------------
    def changes(self, since: int, limit: int = MAX_CHANGES_PER_PAGE) -> ChangePage:
        """Changes with ``Seq > since``, oldest first, at most ``limit``."""
        answer = self._feed({"since": since, "limit": limit})
        changes = tuple(
            Change(
                seq=int(entry["Seq"]),
                change_type=str(entry["ChangeType"]),
                resource_type=str(entry.get("ResourceType", "")),
                resource_id=str(entry["ID"]),
            )
            for entry in answer.get("Changes", [])
        )
        return ChangePage(changes, bool(answer.get("Done", True)), int(answer.get("Last", since)))

    def last_seq(self) -> int:
        """The Seq of the newest change (0 when the log is empty)."""
        answer = self._feed({"last": ""})
        return int(answer.get("Last", 0))

    def _feed(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = self._get_json("/changes", params)
        if not isinstance(answer, dict):
            raise NotOrthanc(
                f"the server at {self.url} is not an Orthanc: /changes answered JSON that is "
                "not a change list"
            )
        return answer

    # Resources ---------------------------------------------------------------------
    def instance(self, instance_id: str) -> InstanceInfo:
        return InstanceInfo.from_json(self._get_json(f"/instances/{instance_id}"))

    def series(self, series_id: str) -> SeriesInfo:
        answer = self._get_json(f"/series/{series_id}")
        tags = answer.get("MainDicomTags", {})
        return SeriesInfo(
            orthanc_id=series_id,
            series_instance_uid=str(tags.get("SeriesInstanceUID", "")),
            modality=str(tags.get("Modality", "")),
            study_id=str(answer["ParentStudy"]),
        )

    def study(self, study_id: str) -> StudyInfo:
        answer = self._get_json(f"/studies/{study_id}")
        tags = answer.get("MainDicomTags", {})
        return StudyInfo(
            orthanc_id=study_id,
            study_instance_uid=str(tags.get("StudyInstanceUID", "")),
            study_date=str(tags.get("StudyDate", "")),
        )

    def series_instances(self, series_id: str) -> list[InstanceInfo]:
        answer = self._get_json(f"/series/{series_id}/instances")
        return [InstanceInfo.from_json(entry) for entry in answer]

    def sop_class_uid(self, instance_id: str) -> str:
        """From the metadata Orthanc records at reception (no file read)."""
        response = self._request("GET", f"/instances/{instance_id}/metadata/SopClassUid")
        return response.text.strip()

    def stored_file(self, instance_id: str) -> StoredFile:
        answer = self._get_json(f"/instances/{instance_id}/attachments/dicom/info")
        return StoredFile(
            uuid=str(answer["Uuid"]),
            size=int(answer["UncompressedSize"]),
            md5=str(answer.get("UncompressedMD5") or ""),
        )

    def instance_page(self, offset: int, limit: int) -> list[str]:
        """Identifiers of the instances Orthanc holds, ``limit`` from ``offset`` on."""
        page = self._get_json("/instances", {"since": offset, "limit": limit})
        return [str(identifier) for identifier in page]

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        path = "/tools/lookup"
        found = self._json(self._request("POST", path, content=sop_instance_uid), path)
        for entry in found if isinstance(found, list) else []:
            if isinstance(entry, dict) and entry.get("Type") == "Instance":
                return str(entry["ID"])
        return None

    def find_instances(self, query: dict[str, str]) -> list[str]:
        """Instances matching a ``/tools/find`` query (tags of any level, e.g. StudyDate)."""
        body = {"Level": "Instance", "Query": query, "Expand": False}
        found = self._json(self._request("POST", "/tools/find", json=body), "/tools/find")
        return [str(identifier) for identifier in found]

    # The file ------------------------------------------------------------------------
    def download(
        self,
        instance_id: str,
        into: BinaryIO,
        *,
        expected: StoredFile | None = None,
        cancelled: threading.Event | None = None,
        chunk_size: int = DOWNLOAD_CHUNK,
    ) -> int:
        """Stream the instance's Part 10 file into ``into``; return its size.

        Raises unless every byte arrived: the count must match Content-Length and,
        when ``expected`` is given, Orthanc's recorded size and MD5.
        """
        path = f"/instances/{instance_id}/file"
        md5 = hashlib.md5(usedforsecurity=False)
        received = 0
        try:
            with self._http.stream(
                "GET", path, headers={"Accept-Encoding": "identity"}
            ) as response:
                self._check(response, path)
                announced = response.headers.get("Content-Length")
                for chunk in response.iter_raw(chunk_size):
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled(f"download of {path} stopped")
                    into.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
        except httpx.HTTPError as exc:
            raise IncompleteDownload(
                f"Orthanc at {self.url}: {path} {describe(exc)} after {received} bytes"
            ) from exc
        if announced is not None and received != int(announced):
            raise IncompleteDownload(
                f"Orthanc at {self.url}: {path} gave {received} of {announced} bytes"
            )
        if expected is not None:
            if received != expected.size:
                raise CorruptDownload(
                    f"Orthanc at {self.url}: {path} is {received} bytes, "
                    f"Orthanc recorded {expected.size}"
                )
            if expected.md5 and md5.hexdigest() != expected.md5:
                raise CorruptDownload(
                    f"Orthanc at {self.url}: {path} does not match the MD5 Orthanc recorded"
                )
        return received


class OrthancSource:
    """An Orthanc as a :class:`~framecdn.ingest.sources.Source`: instances by their UIDs.

    The SOP Instance UID is looked up (``/tools/lookup``), then the file is downloaded
    and checked against the size and MD5 Orthanc recorded, as the follower does.
    """

    def __init__(self, client: OrthancClient) -> None:
        self.client = client

    def download(
        self, key: InstanceKey, into: BinaryIO, *, cancelled: threading.Event | None = None
    ) -> int:
        instance_id = self.client.lookup_instance(key.instance)
        if instance_id is None:
            raise ResourceGone(f"Orthanc at {self.client.url} has no instance {key.instance}")
        expected = self.client.stored_file(instance_id)
        return self.client.download(instance_id, into, expected=expected, cancelled=cancelled)


def _looks_like_orthanc(response: httpx.Response) -> bool:
    """Orthanc's 4xx answers are empty or JSON (Debian's 1.10-1.12 send no Content-Type)."""
    body = response.content.strip()
    if not body:
        return True
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _body_kind(response: httpx.Response) -> str:
    """What a non-JSON answer looks like, in a few words (never its text: it may be long)."""
    head = response.content[:200].lstrip().lower()
    if not head:
        return "an empty body"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"<"):
        return "an XML document"
    return "a body that is not JSON"


def _int_or(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
