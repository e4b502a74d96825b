"""Object key layout: the bucket mirrors the DICOMweb URL so a person can read it.

::

    {prefix}studies/{S}/series/{Se}/instances/{I}/{G}/frames/{n}   raw frame n (1-based)
    {prefix}studies/{S}/series/{Se}/instances/{I}/{G}/metadata     DICOM JSON of the instance
    {prefix}studies/{S}/series/{Se}/instances/{I}/index.json       the commit marker, naming G
    {prefix}studies/{S}/series/{Se}/instances/{I}/{G}/rendered/{n}/{name}   frame n as JPEG/PNG
    {prefix}access/studies/{S}                                      the study's last-access marker

``{G}`` is the *generation*: one write of the instance (the ingest id of its index,
lower-case hex). A replacement writes a new generation beside the committed one and
swaps ``index.json`` last, so the old version is served until the new one commits.
Instances written before generations (index schema 1) keep their frames and metadata
directly under the instance; their generation is ``None`` here and they read as before.

Nothing else in framecdn builds or parses keys by hand: keys of frames and metadata
come from a layout and an index (:meth:`KeyLayout.frame_of`), or, while an instance is
being written, from its generation (:meth:`KeyLayout.frame`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from framecdn.errors import ConfigError, FramecdnError, UsageError

#: Patterns are matched whole (``fullmatch``): ``$`` would let a trailing newline through.
_LENIENT_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9._\-/]*")
_GENERATION_PATTERN = re.compile(r"[0-9a-f]{16,64}")


class InvalidUID(UsageError, ValueError):
    """A UID that must not become part of an object key."""


class InvalidPrefix(ConfigError, ValueError):
    """A key prefix framecdn refuses (it could reach outside its own tree)."""


class InvalidGeneration(FramecdnError, ValueError):
    """A generation name that must not become part of an object key."""


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
    if not _LENIENT_UID_PATTERN.fullmatch(uid):
        raise InvalidUID(f"{what} {uid!r} is not digits and dots")
    return uid


def is_valid_uid(uid: str) -> bool:
    """True for a UID :func:`validate_uid` accepts."""
    try:
        validate_uid(uid)
    except InvalidUID:
        return False
    return True


def validate_generation(generation: str) -> str:
    """Return ``generation`` if it is 16 to 64 lower-case hex digits; raise otherwise."""
    if not isinstance(generation, str) or not _GENERATION_PATTERN.fullmatch(generation):
        raise InvalidGeneration(f"generation {str(generation)[:70]!r} is not 16-64 hex digits")
    return generation


def normalize_prefix(prefix: str | None) -> str:
    """A key prefix is empty or ends with exactly one ``/`` (``clinic-a`` -> ``clinic-a/``)."""
    prefix = (prefix or "").strip("/")
    if not _PREFIX_PATTERN.fullmatch(prefix) or ".." in prefix.split("/"):
        raise InvalidPrefix(f"prefix {prefix!r} may hold only letters, digits, '.', '_', '-', '/'")
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


class StoredGeneration(Protocol):
    """What names one committed write of an instance: an index (see framestore.index)."""

    @property
    def key(self) -> InstanceKey: ...

    @property
    def generation(self) -> str | None: ...


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

    def generation_prefix(self, key: InstanceKey, generation: str | None) -> str:
        """Where one generation of the instance keeps its frames and metadata.

        ``None`` is the layout of schema-1 instances: directly under the instance.
        """
        if generation is None:
            return self.instance_prefix(key)
        return f"{self.instance_prefix(key)}{validate_generation(generation)}/"

    def frame(self, key: InstanceKey, number: int, *, generation: str | None) -> str:
        """Frame ``number`` (1-based) of one generation of the instance."""
        if number < 1:
            raise ValueError(f"frame numbers are 1-based, got {number}")
        return f"{self.generation_prefix(key, generation)}frames/{number}"

    def metadata(self, key: InstanceKey, *, generation: str | None) -> str:
        """The DICOM JSON of one generation of the instance."""
        return f"{self.generation_prefix(key, generation)}metadata"

    def part10(self, key: InstanceKey, *, generation: str) -> str:
        """What rebuilds the ingested file with the frames (``framestore.part10``)."""
        return f"{self.generation_prefix(key, generation)}part10"

    def part10_of(self, index: StoredGeneration) -> str:
        """The part10 object of the generation an index names (schema 2 only)."""
        generation = index.generation
        if generation is None:
            raise ValueError("schema-1 instances have no part10 object")
        return self.part10(index.key, generation=generation)

    def frame_of(self, index: StoredGeneration, number: int) -> str:
        """Frame ``number`` of the generation an index names."""
        return self.frame(index.key, number, generation=index.generation)

    def metadata_of(self, index: StoredGeneration) -> str:
        """The DICOM JSON of the generation an index names."""
        return self.metadata(index.key, generation=index.generation)

    def rendition_of(self, index: StoredGeneration, number: int, name: str) -> str:
        """Frame ``number`` of the generation an index names, rendered as image ``name``.

        The origin makes it on demand; it lives with its generation, so eviction, expiry,
        pinning and the removal of leftover generations treat it like a frame.
        """
        if number < 1:
            raise ValueError(f"frame numbers are 1-based, got {number}")
        if not _RENDITION_NAME.fullmatch(name):
            raise ValueError(f"rendition name {name!r} is not key-safe")
        return f"{self.generation_prefix(index.key, index.generation)}rendered/{number}/{name}"

    def index(self, key: InstanceKey) -> str:
        """The commit marker: one per instance, naming its current generation."""
        return f"{self.instance_prefix(key)}index.json"

    def all_studies(self) -> str:
        return f"{self.prefix}studies/"

    def parse_study_prefix(self, listed: str) -> str | None:
        """The study of a "folder" listed under :meth:`all_studies`, or None."""
        if not listed.startswith(self.all_studies()) or not listed.endswith("/"):
            return None
        study = listed[len(self.all_studies()) : -1]
        return study if is_valid_uid(study) else None

    def access_prefix(self) -> str:
        """Where the origin leaves one last-access marker per study."""
        return f"{self.prefix}access/studies/"

    def access_marker(self, study: str) -> str:
        return f"{self.access_prefix()}{validate_uid(study, what='StudyInstanceUID')}"

    def parse_access_marker(self, object_key: str) -> str | None:
        """The study a marker key belongs to, or None for any other key."""
        if not object_key.startswith(self.access_prefix()):
            return None
        study = object_key[len(self.access_prefix()) :]
        return study if is_valid_uid(study) else None

    def follower_cursor(self, feed_id: str, shard_index: int, shard_count: int) -> str:
        """An Orthanc follower's cursor: one per feed and shard (no retention tag)."""
        if not _FEED_ID.fullmatch(feed_id) or feed_id in (".", ".."):
            raise InvalidPrefix(f"feed id {feed_id!r} may hold only letters, digits, '.', '_', '-'")
        return f"{self.prefix}followers/orthanc/{feed_id}/shard-{shard_index}-of-{shard_count}.json"

    def parse_index_key(self, object_key: str) -> InstanceKey | None:
        """The instance an ``index.json`` key under this prefix belongs to, or None."""
        parsed = parse_object_key(object_key)
        if parsed is None or parsed.prefix != self.prefix or parsed.part != "index":
            return None
        return parsed.instance


_FEED_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_RENDITION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
Part = Literal["frame", "metadata", "index", "rendition", "part10"]
_OBJECT_KEY = re.compile(
    r"(?P<prefix>(?:[^/]+/)*?)studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)"
    r"/instances/(?P<instance>[0-9.]+)/"
    r"(?:(?P<index>index\.json)"
    r"|(?:(?P<generation>[0-9a-f]{16,64})/)?(?:frames/(?P<frame>[1-9][0-9]*)|metadata|(?P<part10>part10)"
    r"|rendered/[1-9][0-9]*/(?P<rendition>[A-Za-z0-9][A-Za-z0-9._-]{0,199})))"
)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """What a listed object key is: whose instance, under which prefix, and which part.

    ``generation`` is the write a frame or metadata object belongs to (None: the
    schema-1 layout, or the index, which belongs to the instance).
    """

    prefix: str
    instance: InstanceKey
    part: Part
    frame: int | None = None
    generation: str | None = None


def parse_object_key(object_key: str) -> ParsedKey | None:
    """Read a key of an instance's object back, under any prefix; None for any other key."""
    match = _OBJECT_KEY.fullmatch(object_key)
    if match is None:
        return None
    try:
        instance = InstanceKey(match["study"], match["series"], match["instance"])
        prefix = normalize_prefix(match["prefix"])
    except ValueError:
        return None
    if prefix != match["prefix"]:
        return None
    if match["index"] is not None:
        return ParsedKey(prefix, instance, "index")
    generation = match["generation"]
    if match["frame"] is not None:
        return ParsedKey(prefix, instance, "frame", int(match["frame"]), generation)
    if match["rendition"] is not None:
        return ParsedKey(prefix, instance, "rendition", None, generation)
    if match["part10"] is not None:
        return ParsedKey(prefix, instance, "part10", None, generation)
    return ParsedKey(prefix, instance, "metadata", None, generation)


def is_index_key(object_key: str) -> bool:
    """True for an instance's ``index.json`` (the commit marker), under any prefix."""
    parsed = parse_object_key(object_key)
    return parsed is not None and parsed.part == "index"
