"""What a rendered or thumbnail request asks for (PS3.18 §8.3.5), parsed and normalised.

Pure functions, no imaging libraries: the origin checks a request (400 for a bad
parameter, 406 for an Accept it cannot satisfy) before it reads anything, and the
normalised :class:`Rendition` names the rendered object in the bucket, so two requests
that differ only in spelling (``window=40,400`` and ``window=40.0,400,linear``) share
one object. The parameters supported:

* ``accept`` (query, wins over the header) / ``Accept``: ``image/jpeg`` (the default, also
  for ``*/*`` and ``image/*``) or ``image/png``; anything else is 406.
* ``window=center,width[,function]``: the VOI window over the modality values (after
  Rescale Slope/Intercept); function ``linear`` (default), ``linear-exact`` or ``sigmoid``
  (PS3.3 C.11.2.1.2). Without it the instance's own window is used.
* ``viewport=vw,vh[,sx,sy,sw,sh]``: the source region (default: the whole image; a
  negative ``sw``/``sh`` flips it) scaled to fit ``vw`` x ``vh`` keeping its aspect ratio.
* ``quality=1..100``: JPEG quality (PNG is lossless and ignores it).

``annotation``, ``charset`` and ``iccprofile`` are not supported: such a request is 400,
so nobody gets an image without the annotations they asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from framecdn.errors import FramecdnError, Refusal
from framecdn.origin.negotiation import parse_accept

JPEG = "image/jpeg"
PNG = "image/png"
#: Offered in this order: the first one a wildcard range admits is the answer.
RENDERED_MEDIA_TYPES = (JPEG, PNG)
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
#: Changes whenever the renderer's output for the same inputs would change, so stored
#: renditions of an older renderer are never served for a newer one.
RENDERER_VERSION = "1"
_UNSUPPORTED = ("annotation", "charset", "iccprofile")
#: Window values beyond any pixel data (keeps object names short).
_LARGEST = 1e12


class InvalidRendition(Refusal, ValueError):
    """A rendering parameter framecdn cannot honour (answered 400)."""


class UnacceptableRendition(Refusal):
    """No rendered media type framecdn produces is acceptable (answered 406)."""

    def __init__(self, accept: str) -> None:
        super().__init__(
            f"cannot render as {accept!r}; available: {', '.join(RENDERED_MEDIA_TYPES)}"
        )
        self.available = list(RENDERED_MEDIA_TYPES)


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window over modality values (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS:
            raise InvalidRendition(
                f"window function {self.function!r} is not one of {', '.join(WINDOW_FUNCTIONS)}"
            )
        if not (abs(self.center) <= _LARGEST and abs(self.width) <= _LARGEST):
            raise InvalidRendition(f"window center and width must be within ±{_LARGEST:.0e}")
        if self.function == "linear" and self.width < 1:
            raise InvalidRendition("a linear window's width must be at least 1")
        if self.function != "linear" and self.width <= 0:
            raise InvalidRendition(f"a {self.function} window's width must be above 0")

    @property
    def token(self) -> str:
        return f"{_number(self.center)}_{_number(self.width)}_{self.function}"


@dataclass(frozen=True, slots=True)
class Viewport:
    """Output size (``vw`` x ``vh``) and the source region (None: the whole image)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None

    @property
    def token(self) -> str:
        text = f"{self.width}x{self.height}"
        if self.region is not None:
            text += "_" + "_".join(str(v) for v in self.region)
        return text


@dataclass(frozen=True, slots=True)
class Rendition:
    """One rendered image of one frame: media type, window, viewport, quality."""

    media_type: str
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None  # JPEG only; None for PNG

    @property
    def extension(self) -> str:
        return "png" if self.media_type == PNG else "jpg"

    @property
    def token(self) -> str:
        """The normalised parameters, e.g. ``jpeg-q90-w40_400_linear-v256x256`` (key-safe)."""
        parts = [self.extension.replace("jpg", "jpeg")]
        if self.quality is not None:
            parts.append(f"q{self.quality}")
        parts.append(f"w{self.window.token}" if self.window else "wauto")
        parts.append(f"v{self.viewport.token}" if self.viewport else "vfull")
        return "-".join(parts)

    def object_name(self, frame_sha256: str, metadata_sha256: str) -> str:
        """The rendered object's name: parameters plus a digest of everything it depends on
        (the frame, the metadata that windows it, the renderer), so it is computed once."""
        digest = hashlib.sha256(
            f"{RENDERER_VERSION}|{frame_sha256}|{metadata_sha256}|{self.token}".encode()
        ).hexdigest()[:32]
        return f"{self.token}-{digest}.{self.extension}"


def _number(value: float) -> str:
    """A number in few characters, no exponent: ``40.0`` -> ``40``, ``-0.25`` stays."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _pieces(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",")]


def _admits(pattern: str, media_type: str) -> bool:
    major, _, minor = pattern.partition("/")
    return pattern == media_type or major == "*" or (
        minor == "*" and media_type.startswith(major + "/")
    )


def parse_window(text: str) -> Window:
    pieces = _pieces(text)
    if len(pieces) not in (2, 3):
        raise InvalidRendition(f"window must be center,width[,function], got {text!r}")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except ValueError as exc:
        raise InvalidRendition(f"window center and width must be numbers, got {text!r}") from exc
    function = pieces[2].lower().replace("_", "-") if len(pieces) == 3 and pieces[2] else "linear"
    return Window(center, width, function)


def parse_viewport(text: str, max_side: int) -> Viewport:
    pieces = _pieces(text)
    if len(pieces) not in (2, 6):
        raise InvalidRendition(f"viewport must be vw,vh[,sx,sy,sw,sh], got {text!r}")
    try:
        width, height = int(pieces[0]), int(pieces[1])
        region_values = [int(p) if p else None for p in pieces[2:]]
    except ValueError as exc:
        raise InvalidRendition(f"viewport values must be integers, got {text!r}") from exc
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise InvalidRendition(f"viewport width and height must be 1..{max_side}, got {text!r}")
    region = None
    if region_values:
        sx, sy, sw, sh = region_values
        if (sx or 0) < 0 or (sy or 0) < 0:
            raise InvalidRendition(f"viewport sx and sy must not be negative, got {text!r}")
        if sw == 0 or sh == 0:
            raise InvalidRendition(f"viewport sw and sh must not be 0, got {text!r}")
        if any(v is not None for v in region_values):
            region = (sx or 0, sy or 0, sw or 0, sh or 0)  # 0 for sw/sh: to the image's edge
    return Viewport(width, height, region)


def negotiate_rendered(accept: str | None) -> str:
    """The rendered media type for an Accept header (or ``accept`` query value)."""
    for rng in parse_accept(accept):
        for offered in RENDERED_MEDIA_TYPES:
            if _admits(rng.media_type, offered):
                return offered
    raise UnacceptableRendition(accept or "")


def parse_rendition(
    query: Mapping[str, str],
    accept_header: str | None,
    *,
    default_quality: int,
    max_side: int,
    default_viewport: Viewport | None = None,
) -> Rendition:
    """The :class:`Rendition` a request asks for; raises InvalidRendition or
    UnacceptableRendition. ``default_viewport`` applies when none is given (thumbnails)."""
    for name in _UNSUPPORTED:
        if name in query:
            raise InvalidRendition(f"the {name} parameter is not supported")
    media_type = negotiate_rendered(query.get("accept") or accept_header)
    window = parse_window(query["window"]) if query.get("window") else None
    viewport = (
        parse_viewport(query["viewport"], max_side) if query.get("viewport") else default_viewport
    )
    quality = None
    if media_type == JPEG:
        quality = default_quality
        if query.get("quality"):
            try:
                quality = int(query["quality"])
            except ValueError as exc:
                raise InvalidRendition(f"quality must be 1..100, got {query['quality']!r}") from exc
            if not 1 <= quality <= 100:
                raise InvalidRendition(f"quality must be 1..100, got {quality}")
    return Rendition(media_type, window, viewport, quality)


class CannotRender(FramecdnError):
    """This frame cannot be rendered as asked; ``status`` is what the origin answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class RenderJob:
    """Everything one rendering needs, picklable for a worker process."""

    metadata: dict[str, Any]
    frame: bytes
    transfer_syntax_uid: str
    number: int
    rendition: Rendition
