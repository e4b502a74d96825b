"""Object key layout: the bucket mirrors the DICOMweb URL so a person can read it.

::

    {prefix}studies/{S}/series/{Se}/instances/{I}/frames/{n}   raw frame n (1-based)
    {prefix}studies/{S}/series/{Se}/instances/{I}/metadata     DICOM JSON of the instance
    {prefix}studies/{S}/series/{Se}/instances/{I}/index.json   written last: the commit marker

Nothing else in framecdn builds keys by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LENIENT_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9._\-/]*$")


class InvalidUID(ValueError):
    """A UID that must not become part of an object key."""


def validate_uid(uid: str, *, what: str = "UID") -> str:
    """Return ``uid`` if it is digits and dots, at most 64 characters; raise otherwise.

    Leading zeros in a component are tolerated (some modalities write them and
    they are still unique and key-safe); anything else that is not a digit or a
    dot is refused, which also rules out path traversal in keys.
    """
    if not isinstance(uid, str) or not uid:
        raise InvalidUID(f"{what} is missing")
    if len(uid) > 64:
        raise InvalidUID(f"{what} {uid[:70]!r} is longer than 64 characters")
    if not _LENIENT_UID_PATTERN.match(uid):
        raise InvalidUID(f"{what} {uid!r} is not digits and dots")
    return uid


def is_valid_uid(uid: str) -> bool:
    """True for a UID :func:`validate_uid` accepts."""
    try:
        validate_uid(uid)
    except InvalidUID:
        return False
    return True


def normalize_prefix(prefix: str | None) -> str:
    """A key prefix is empty or ends with exactly one ``/`` (``clinic-a`` -> ``clinic-a/``)."""
    prefix = (prefix or "").strip("/")
    if not _PREFIX_PATTERN.match(prefix) or ".." in prefix.split("/"):
        raise ValueError(f"prefix {prefix!r} may hold only letters, digits, '.', '_', '-', '/'")
    return f"{prefix}/" if prefix else ""


@dataclass(frozen=True, slots=True)
class InstanceKey:
    """The three UIDs that name one SOP instance, validated on construction."""

    study: str
    series: str
    instance: str

    def __post_init__(self) -> None:
        validate_uid(self.study, what="StudyInstanceUID")
        validate_uid(self.series, what="SeriesInstanceUID")
        validate_uid(self.instance, what="SOPInstanceUID")


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds every object key under one (normalised) prefix."""

    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))

    def study_prefix(self, study: str) -> str:
        return f"{self.prefix}studies/{validate_uid(study, what='StudyInstanceUID')}/"

    def series_prefix(self, study: str, series: str) -> str:
        series = validate_uid(series, what="SeriesInstanceUID")
        return f"{self.study_prefix(study)}series/{series}/"

    def instance_prefix(self, key: InstanceKey) -> str:
        return f"{self.prefix}studies/{key.study}/series/{key.series}/instances/{key.instance}/"

    def frame(self, key: InstanceKey, number: int) -> str:
        if number < 1:
            raise ValueError(f"frame numbers are 1-based, got {number}")
        return f"{self.instance_prefix(key)}frames/{number}"

    def metadata(self, key: InstanceKey) -> str:
        return f"{self.instance_prefix(key)}metadata"

    def index(self, key: InstanceKey) -> str:
        return f"{self.instance_prefix(key)}index.json"

    def all_studies(self) -> str:
        return f"{self.prefix}studies/"

    def parse_index_key(self, object_key: str) -> InstanceKey | None:
        """The instance an ``index.json`` key belongs to, or None for any other key."""
        if not object_key.startswith(self.prefix):
            return None
        parts = object_key[len(self.prefix) :].split("/")
        if (
            len(parts) != 7
            or parts[0] != "studies"
            or parts[2] != "series"
            or parts[4] != "instances"
            or parts[6] != "index.json"
        ):
            return None
        try:
            return InstanceKey(parts[1], parts[3], parts[5])
        except InvalidUID:
            return None
