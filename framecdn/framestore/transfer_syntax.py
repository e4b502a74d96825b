"""Transfer syntaxes framecdn stores, and the DICOMweb media type of each: the one table.

A frame object holds exactly what a DICOMweb part carries. Native pixel data is
always stored as Explicit VR Little Endian bytes (the web has no Implicit VR or big
endian), so every native source syntax maps to ``1.2.840.10008.1.2.1``.

The syntax groups are pydicom's (``pydicom.uid.JPEGTransferSyntaxes`` and friends);
this module only adds what DICOMweb says about them: the single-part media type of
each (PS3.18 Table 8.7.3-4/5) and each media type's default syntax. Ingest (what to
store) and the origin's Accept negotiation (what to answer) both read it from here.
"""

from __future__ import annotations

from pydicom import uid

from framecdn.errors import FramecdnError

IMPLICIT_VR_LITTLE_ENDIAN = str(uid.ImplicitVRLittleEndian)
EXPLICIT_VR_LITTLE_ENDIAN = str(uid.ExplicitVRLittleEndian)
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = str(uid.DeflatedExplicitVRLittleEndian)
EXPLICIT_VR_BIG_ENDIAN = str(uid.ExplicitVRBigEndian)
#: Encapsulated Uncompressed Explicit VR Little Endian (2022; not in pydicom 3.0's groups).
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"

NATIVE_MEDIA_TYPE = "application/octet-stream"

#: Source syntaxes whose Pixel Data is native (not encapsulated): pydicom's "uncompressed".
NATIVE_SYNTAXES = frozenset(str(s) for s in uid.UncompressedTransferSyntaxes)

_JPEG2000_PART2 = frozenset({uid.JPEG2000MCLossless, uid.JPEG2000MC})
_HTJ2K = frozenset({uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K})


def _jpeg2000_media_type(syntax: str) -> str:
    """pydicom's JPEG 2000 group holds three DICOMweb media types."""
    if syntax in _HTJ2K:
        return "image/jphc"
    if syntax in _JPEG2000_PART2:
        return "image/jpx"
    return "image/jp2"


#: Encapsulated syntaxes framecdn serves, with their single-part media type (PS3.18 §8.7.3.5).
ENCAPSULATED_MEDIA_TYPES: dict[str, str] = {
    **{str(s): "image/jpeg" for s in uid.JPEGTransferSyntaxes},
    **{str(s): "image/jls" for s in uid.JPEGLSTransferSyntaxes},
    **{str(s): _jpeg2000_media_type(s) for s in uid.JPEG2000TransferSyntaxes},
    **{str(s): "image/dicom-rle" for s in uid.RLETransferSyntaxes},
    ENCAPSULATED_UNCOMPRESSED: NATIVE_MEDIA_TYPE,
}

#: The syntax PS3.18 Table 8.7.3-5 makes the default for each media type.
DEFAULT_SYNTAX_FOR_MEDIA_TYPE: dict[str, str] = {
    NATIVE_MEDIA_TYPE: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": str(uid.JPEGBaseline8Bit),
    "image/jls": str(uid.JPEGLSLossless),
    "image/jp2": str(uid.JPEG2000Lossless),
    "image/jpx": str(uid.JPEG2000MCLossless),
    "image/jphc": str(uid.HTJ2KLossless),
    "image/dicom-rle": str(uid.RLELossless),
}

#: Legacy spellings of media types some clients (dicomweb-client) still send.
MEDIA_TYPE_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

#: Every media type a frame can be stored as, each with the syntaxes it may carry.
MEDIA_TYPE_SYNTAXES: dict[str, frozenset[str]] = {
    media: frozenset(s for s, m in ENCAPSULATED_MEDIA_TYPES.items() if m == media)
    for media in DEFAULT_SYNTAX_FOR_MEDIA_TYPE
}
MEDIA_TYPE_SYNTAXES[NATIVE_MEDIA_TYPE] |= {EXPLICIT_VR_LITTLE_ENDIAN}


class UnsupportedTransferSyntax(FramecdnError):
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
