"""Accept negotiation for frame requests (PS3.18 §8.7), without transcoding.

Pure functions: an Accept header, the stored representation and the number of
frames asked for in, the representation to answer with (or :class:`NotAcceptable`)
out. :func:`parse_accept` is the origin's one Accept parser (metadata uses it through
:func:`accepts` too). Media types and their default syntaxes come from
:mod:`framecdn.framestore.transfer_syntax`. The rules, as real clients need them:

* parameter values may be quoted or not, names are case-insensitive, duplicate
  parameters are alternatives (any may match), ``q`` orders the ranges (stable
  for equal q) and ``q=0`` excludes a range;
* ``multipart/related`` takes the part media type from ``type`` (absent = any);
  ``transfer-syntax=*`` (or ``"*"``) accepts the stored syntax, an explicit UID must
  equal it, and an absent one means the media type's default syntax (PS3.18 Table
  8.7.3-5) — unless the part type is a wildcard, where the server chooses;
* ``application/octet-stream`` with ``transfer-syntax=*`` (OHIF's default) or with
  the stored syntax's UID also carries a compressed codestream, labelled
  ``application/octet-stream; transfer-syntax=<stored UID>`` (as dcm4chee does, and
  as Cornerstone decodes it: it reads only the ``transfer-syntax`` parameter);
* ``*/*`` and a missing Accept answer multipart with the stored syntax;
* a single-part media type (``application/octet-stream``, ``image/jp2`` ...) can carry
  one frame only, so it applies to single-frame requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from framecdn.errors import Refusal
from framecdn.framestore.transfer_syntax import (
    DEFAULT_SYNTAX_FOR_MEDIA_TYPE,
    MEDIA_TYPE_ALIASES,
    NATIVE_MEDIA_TYPE,
    content_type,
)

MULTIPART_RELATED = "multipart/related"
OCTET_STREAM = NATIVE_MEDIA_TYPE


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header, parameters lower-cased and unquoted."""

    media_type: str
    params: tuple[tuple[str, str], ...]
    q: float = 1.0

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.params if key == name]


@dataclass(frozen=True, slots=True)
class Representation:
    """What a frame response carries: multipart or single part, media type, syntax."""

    multipart: bool
    media_type: str
    transfer_syntax_uid: str

    @property
    def part_content_type(self) -> str:
        """Content-Type of one frame (a part, or the whole single-part body)."""
        return content_type(self.media_type, self.transfer_syntax_uid)

    def response_content_type(self, boundary: str | None = None) -> str:
        if not self.multipart:
            return self.part_content_type
        return f'{MULTIPART_RELATED}; type="{self.media_type}"; boundary={boundary}'

    @property
    def tag(self) -> str:
        """A short stable name of this representation (for ETags and cache keys)."""
        kind = "m" if self.multipart else "s"
        return f"{kind}:{self.media_type}:{self.transfer_syntax_uid}"


#: At most this much of the client's Accept header is quoted back in a 406.
ECHO_LIMIT = 200


class NotAcceptable(Refusal):
    """No acceptable representation can be served without transcoding (406).

    The message quotes at most :data:`ECHO_LIMIT` characters of the Accept header:
    a client's input is never echoed unbounded.
    """

    status = 406

    def __init__(self, accept: str, available: list[str]) -> None:
        self.accept = accept
        self.available = available
        shown = accept if len(accept) <= ECHO_LIMIT else accept[:ECHO_LIMIT] + "..."
        super().__init__(
            f"cannot serve {shown!r} without transcoding; available: {'; or '.join(available)}",
            details={"available": available},
        )


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes (backslash escapes honoured)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


def _normalise_type(media_type: str) -> str:
    media_type = media_type.strip().lower()
    return MEDIA_TYPE_ALIASES.get(media_type, media_type)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (stable); q=0 dropped.

    Unparseable elements are skipped rather than failing the whole request.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", ())]
    ranges: list[MediaRange] = []
    for element in _split(header, ","):
        pieces = _split(element, ";")
        media_type = _normalise_type(pieces[0])
        if media_type.count("/") != 1 or not all(media_type.split("/")):
            continue
        q = 1.0
        params: list[tuple[str, str]] = []
        for piece in pieces[1:]:
            name, sep, value = piece.partition("=")
            name = name.strip().lower()
            if not sep or not name:
                continue
            value = _unquote(value)
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 1.0
                continue
            if name == "type":
                value = _normalise_type(value)
            params.append((name, value))
        if q > 0:
            ranges.append(MediaRange(media_type, tuple(params), q))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    major, _, minor = pattern.partition("/")
    if minor == "*":
        return media_type.split("/", 1)[0] == major
    return pattern == media_type


def accepts(header: str | None, media_type: str) -> bool:
    """True when some range of the Accept header admits ``media_type`` (parameters aside)."""
    return any(_type_matches(rng.media_type, media_type) for rng in parse_accept(header))


def _syntax_matches(syntaxes: list[str], pattern: str, media_type: str, stored: str) -> bool:
    if not syntaxes:
        if "*" in pattern:
            return True  # a wildcard part type leaves the choice to the server
        return DEFAULT_SYNTAX_FOR_MEDIA_TYPE.get(media_type) == stored
    return any(value == "*" or value == stored for value in syntaxes)


def _octet_stream_carries(pattern: str, syntaxes: list[str], stored: str) -> bool:
    """An explicit octet-stream range that admits the stored (compressed) syntax."""
    return pattern == OCTET_STREAM and any(value in ("*", stored) for value in syntaxes)


def _match(rng: MediaRange, stored: Representation, frame_count: int) -> Representation | None:
    media, syntax = stored.media_type, stored.transfer_syntax_uid
    if rng.media_type == MULTIPART_RELATED:
        patterns = rng.values("type") or ["*/*"]
        syntaxes = rng.values("transfer-syntax")
        for pattern in patterns:
            if _type_matches(pattern, media) and _syntax_matches(syntaxes, pattern, media, syntax):
                return Representation(True, media, syntax)
            if _octet_stream_carries(pattern, syntaxes, syntax):
                return Representation(True, OCTET_STREAM, syntax)
        return None
    if rng.media_type == "*/*":
        if _syntax_matches(rng.values("transfer-syntax"), "*/*", media, syntax):
            return Representation(True, media, syntax)
        return None
    if frame_count != 1:
        return None
    syntaxes = rng.values("transfer-syntax")
    if _type_matches(rng.media_type, media) and _syntax_matches(
        syntaxes, rng.media_type, media, syntax
    ):
        return Representation(False, media, syntax)
    if _octet_stream_carries(rng.media_type, syntaxes, syntax):
        return Representation(False, OCTET_STREAM, syntax)
    return None


def available(stored: Representation, frame_count: int) -> list[str]:
    """What this resource can be served as, for a 406's explanation."""
    offers = [
        f'{MULTIPART_RELATED}; type="{stored.media_type}"; '
        f"transfer-syntax={stored.transfer_syntax_uid}"
    ]
    if frame_count == 1:
        offers.append(stored.part_content_type)
    return offers


def negotiate(accept: str | None, stored: Representation, frame_count: int) -> Representation:
    """The representation to answer a frame request with; raises NotAcceptable (406)."""
    for rng in parse_accept(accept):
        chosen = _match(rng, stored, frame_count)
        if chosen is not None:
            return chosen
    raise NotAcceptable(accept or "", available(stored, frame_count))


def stored_representation(media_type: str, transfer_syntax_uid: str) -> Representation:
    """The representation the frames are stored in (single-part form)."""
    return Representation(False, media_type, transfer_syntax_uid)
