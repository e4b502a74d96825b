"""Transfer syntaxes framecdn stores, and the DICOMweb media type of each.

A frame object holds exactly what a DICOMweb part carries. Native pixel data is
always stored as Explicit VR Little Endian bytes (the web has no Implicit VR or big
endian), so every native source syntax maps to ``1.2.840.10008.1.2.1``.
"""

from __future__ import annotations

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

NATIVE_MEDIA_TYPE = "application/octet-stream"

#: Source syntaxes whose Pixel Data is native (not encapsulated).
NATIVE_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: Encapsulated syntaxes framecdn serves, with their single-part media type (PS3.18 §8.7.3.5).
ENCAPSULATED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    ENCAPSULATED_UNCOMPRESSED: NATIVE_MEDIA_TYPE,  # Encapsulated Uncompressed Explicit VR LE
}

#: Every media type a frame can be stored as, each with the syntaxes it may carry.
MEDIA_TYPE_SYNTAXES: dict[str, frozenset[str]] = {}
for _uid, _media in ENCAPSULATED_MEDIA_TYPES.items():
    MEDIA_TYPE_SYNTAXES.setdefault(_media, frozenset())
    MEDIA_TYPE_SYNTAXES[_media] = MEDIA_TYPE_SYNTAXES[_media] | {_uid}
MEDIA_TYPE_SYNTAXES[NATIVE_MEDIA_TYPE] = MEDIA_TYPE_SYNTAXES[NATIVE_MEDIA_TYPE] | {
    EXPLICIT_VR_LITTLE_ENDIAN
}

#: The syntax PS3.18 Table 8.7.3-5 makes the default for each media type.
DEFAULT_SYNTAX_FOR_MEDIA_TYPE: dict[str, str] = {
    NATIVE_MEDIA_TYPE: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


class UnsupportedTransferSyntax(ValueError):
    """The instance's transfer syntax has no frame representation framecdn serves."""


def stored_representation(source_syntax: str) -> tuple[str, str]:
    """Return ``(transfer_syntax_uid, media_type)`` of the frames stored for a source syntax.

    Native syntaxes all become Explicit VR Little Endian; encapsulated ones are kept.
    Video syntaxes (MPEG, HEVC) have no per-frame objects and are refused.
    """
    if source_syntax in NATIVE_SYNTAXES:
        return EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_MEDIA_TYPE
    media_type = ENCAPSULATED_MEDIA_TYPES.get(source_syntax)
    if media_type is None:
        raise UnsupportedTransferSyntax(
            f"transfer syntax {source_syntax} is not supported for per-frame storage"
        )
    return source_syntax, media_type


def is_encapsulated(source_syntax: str) -> bool:
    """True when Pixel Data of this syntax is a sequence of fragments."""
    return source_syntax not in NATIVE_SYNTAXES


def content_type(media_type: str, transfer_syntax_uid: str) -> str:
    """The Content-Type a frame object (and a single-part response) carries."""
    return f"{media_type}; transfer-syntax={transfer_syntax_uid}"
