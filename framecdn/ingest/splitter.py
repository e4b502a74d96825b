"""The streaming frame splitter: one DICOM file in, its frames' DICOMweb bytes out.

Memory stays at about one frame whatever the instance size: pydicom reads the header
(``stop_before_pixels``), the splitter finds the Pixel Data value's file offset and
then reads each frame by seeking. Sources that cannot seek (an HTTP body) and deflated
files are first copied to a temporary file on disk, never to memory.

Encapsulated Pixel Data is checked item by item before a single frame is emitted:
pydicom's fragment walker stops quietly at the end of a truncated file and guesses
frame boundaries from EOI markers (missing one split over two fragments), and a
frame store must never hold wrong bytes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from framecdn.framestore.keys import InvalidUID, validate_uid
from framecdn.framestore.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    UnsupportedTransferSyntax,
    is_encapsulated,
    stored_representation,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = {0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"
}
#: What pydicom raises on files that are not DICOM or are cut short in the header.
_HEADER_ERRORS = (InvalidDicomError, EOFError, ValueError, struct.error, KeyError, NotImplementedError)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_JPEG_START = (b"\xff\xd8",)
_J2K_START = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")
#: How each codestream family begins; used to find frames when no offset table says.
_CODESTREAM_STARTS: dict[str, tuple[bytes, ...]] = {
    "1.2.840.10008.1.2.4.50": _JPEG_START,
    "1.2.840.10008.1.2.4.51": _JPEG_START,
    "1.2.840.10008.1.2.4.57": _JPEG_START,
    "1.2.840.10008.1.2.4.70": _JPEG_START,
    "1.2.840.10008.1.2.4.80": _JPEG_START,
    "1.2.840.10008.1.2.4.81": _JPEG_START,
    "1.2.840.10008.1.2.4.90": _J2K_START,
    "1.2.840.10008.1.2.4.91": _J2K_START,
    "1.2.840.10008.1.2.4.92": _J2K_START,
    "1.2.840.10008.1.2.4.93": _J2K_START,
    "1.2.840.10008.1.2.4.201": _J2K_START,
    "1.2.840.10008.1.2.4.202": _J2K_START,
    "1.2.840.10008.1.2.4.203": _J2K_START,
}

Fragment = tuple[int, int]  # (file offset of the value, length)


@dataclass(frozen=True)
class PixelDataValue:
    """Where the Pixel Data value lies in the (seekable) file."""

    offset: int
    length: int  # 0xFFFFFFFF for encapsulated
    vr: str  # "OB", "OW", or "" in Implicit VR


class InvalidInstance(Exception):
    """One-line reason why a file cannot be ingested (str(exc) is shown to the user)."""


@dataclass
class SplitInstance:
    """An opened instance: its header, and its frames read lazily from disk."""

    dataset: Dataset
    source_transfer_syntax_uid: str
    transfer_syntax_uid: str
    media_type: str
    number_of_frames: int
    _read_frames: Callable[[], Iterator[bytes]] = field(repr=False)

    def frames(self) -> Iterator[bytes]:
        """Each frame's exact DICOMweb bytes, in order, ``number_of_frames`` of them."""
        count = 0
        for frame in self._read_frames():
            count += 1
            yield frame
        if count != self.number_of_frames:
            raise InvalidInstance(
                f"found {count} frames, NumberOfFrames is {self.number_of_frames}"
            )


@contextlib.contextmanager
def open_instance(
    source: str | os.PathLike[str] | BinaryIO, *, spool_dir: str | None = None
) -> Iterator[SplitInstance]:
    """Open a DICOM Part 10 file for splitting; temporary files are removed on exit.

    ``source`` is a path or a binary file object; an object that cannot seek (or is
    not at its start) is spooled to a temporary file in ``spool_dir`` first.
    """
    with contextlib.ExitStack() as stack:
        fp = _seekable(source, stack, spool_dir)
        meta = _read_meta(fp)
        source_syntax = str(meta.TransferSyntaxUID)
        stored_syntax, media_type = _stored_representation(source_syntax)
        if source_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            fp = _inflate(fp, meta, stack, spool_dir)
        dataset, value = _read_header(fp)
        dataset.file_meta = meta
        _check_uids(dataset)
        number_of_frames = _number_of_frames(dataset)
        if is_encapsulated(source_syntax):
            read_frames = _encapsulated_reader(fp, dataset, source_syntax, value, number_of_frames)
        else:
            read_frames = _native_reader(fp, dataset, source_syntax, value, number_of_frames)
        yield SplitInstance(
            dataset=dataset,
            source_transfer_syntax_uid=source_syntax,
            transfer_syntax_uid=stored_syntax,
            media_type=media_type,
            number_of_frames=number_of_frames,
            _read_frames=read_frames,
        )


# -- opening ---------------------------------------------------------------------------


def _seekable(
    source: str | os.PathLike[str] | BinaryIO, stack: contextlib.ExitStack, spool_dir: str | None
) -> BinaryIO:
    """A seekable binary file positioned at the start of the DICOM stream."""
    if isinstance(source, (str, os.PathLike)):
        return stack.enter_context(open(source, "rb"))
    try:
        if source.seekable() and source.tell() == 0:
            return source
    except (AttributeError, OSError):
        pass
    spool = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir))
    shutil.copyfileobj(source, spool, _CHUNK)
    spool.seek(0)
    return spool


def _read_meta(fp: BinaryIO) -> FileMetaDataset:
    """The File Meta Information, read without touching the (maybe deflated) dataset."""
    try:
        read_preamble(fp, False)
    except InvalidDicomError:
        raise InvalidInstance(
            "not a DICOM Part 10 file (no 'DICM' prefix after the preamble)"
        ) from None
    try:
        meta = _read_file_meta_info(fp)
    except _HEADER_ERRORS as exc:
        raise InvalidInstance(f"not a DICOM Part 10 file ({_first_line(exc)})") from None
    if not meta.get("TransferSyntaxUID"):
        raise InvalidInstance("not a DICOM Part 10 file (no Transfer Syntax UID in the file meta)")
    fp.seek(0)
    return meta


def _stored_representation(source_syntax: str) -> tuple[str, str]:
    try:
        return stored_representation(source_syntax)
    except UnsupportedTransferSyntax:
        uid = UID(source_syntax)
        if uid in pydicom.uid.MPEGTransferSyntaxes or "HEVC" in uid.name or "MPEG" in uid.name:
            raise InvalidInstance(
                f"video transfer syntax {uid.name} ({uid}) has no per-frame representation"
            ) from None
        name = f"{uid.name} ({uid})" if uid.is_transfer_syntax else uid
        raise InvalidInstance(f"unsupported transfer syntax {name}") from None


def _inflate(
    fp: BinaryIO, meta: FileMetaDataset, stack: contextlib.ExitStack, spool_dir: str | None
) -> BinaryIO:
    """Inflate a Deflated Explicit VR LE file into a temporary Explicit VR LE file.

    pydicom inflates the whole dataset in memory; here it streams chunk by chunk,
    with the output of each step bounded, so a deflate bomb cannot grow memory.
    """
    read_preamble(fp, False)
    _read_file_meta_info(fp)  # leaves fp at the first deflated byte
    out = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir))
    inflated_meta = copy.deepcopy(meta)  # setting a keyword mutates shared elements
    inflated_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, inflated_meta, enforce_standard=False)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while chunk := fp.read(_CHUNK):
            while chunk:
                out.write(inflater.decompress(chunk, _CHUNK))
                chunk = inflater.unconsumed_tail
        out.write(inflater.flush())
    except zlib.error as exc:
        raise InvalidInstance(f"deflated dataset is corrupt ({exc})") from None
    if not inflater.eof:
        raise InvalidInstance("deflated dataset is truncated")
    out.seek(0)
    return out


def _read_header(fp: BinaryIO) -> tuple[Dataset, PixelDataValue]:
    """Every element before Pixel Data, and the Pixel Data value's offset and length."""
    try:
        dataset = pydicom.dcmread(fp, stop_before_pixels=True)
    except _HEADER_ERRORS as exc:
        raise InvalidInstance(f"cannot read the DICOM header ({_first_line(exc)})") from None
    syntax = UID(dataset.file_meta.TransferSyntaxUID)  # the inflated copy's, if deflated
    implicit, endian = syntax.is_implicit_VR, "<" if syntax.is_little_endian else ">"
    header = fp.read(8)
    if len(header) < 8:
        raise InvalidInstance("no Pixel Data element (or the file is truncated before it)")
    group, element = struct.unpack(f"{endian}HH", header[:4])
    tag = group << 16 | element
    if tag in _FLOAT_PIXEL_DATA:
        raise InvalidInstance(f"{_FLOAT_PIXEL_DATA[tag]} is not supported")
    if tag != _PIXEL_DATA:
        raise InvalidInstance(f"no Pixel Data element (found ({group:04X},{element:04X}) instead)")
    vr = "" if implicit else header[4:6].decode("latin-1")
    if implicit:
        (length,) = struct.unpack("<L", header[4:])
    elif header[4:6] in _LONG_VRS:
        (length,) = struct.unpack(f"{endian}L", _read_exact(fp, 4, "Pixel Data element header"))
    else:
        (length,) = struct.unpack(f"{endian}H", header[6:])
    value_offset = fp.tell()
    _read_trailing_elements(fp, dataset, value_offset, length, implicit, endian == "<")
    return dataset, PixelDataValue(value_offset, length, vr)


def _read_trailing_elements(
    fp: BinaryIO, dataset: Dataset, value_offset: int, length: int, implicit: bool, little: bool
) -> None:
    """Keep elements stored after native Pixel Data (e.g. trailing padding), if any."""
    if length == _UNDEFINED_LENGTH:
        return  # finding the end means walking every item; encapsulated files rarely have any
    end = value_offset + length
    if fp.seek(0, io.SEEK_END) <= end:
        return
    fp.seek(end)
    try:
        dataset.update(read_dataset(fp, implicit, little))
    except Exception as exc:  # pixels are fine; a broken tail only loses those elements
        log.warning("ignoring unreadable elements after Pixel Data: %s", _first_line(exc))


def _check_uids(dataset: Dataset) -> None:
    for keyword in _REQUIRED_UIDS:
        value = dataset.get(keyword)
        try:
            validate_uid(str(value) if value else "", what=keyword)
        except InvalidUID as exc:
            raise InvalidInstance(str(exc)) from None


def _number_of_frames(dataset: Dataset) -> int:
    value = dataset.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise InvalidInstance(f"NumberOfFrames {value!r} is not a number") from None
    if frames < 1:
        raise InvalidInstance(f"NumberOfFrames is {frames}")
    return frames


# -- native ----------------------------------------------------------------------------


def _native_reader(
    fp: BinaryIO,
    dataset: Dataset,
    source_syntax: str,
    value: PixelDataValue,
    number_of_frames: int,
) -> Callable[[], Iterator[bytes]]:
    """Check the Pixel Data holds every frame, and return a reader of LE frames."""
    if value.length == _UNDEFINED_LENGTH:
        raise InvalidInstance("native Pixel Data has undefined length")
    rows, columns, bits = (_required_int(dataset, k) for k in ("Rows", "Columns", "BitsAllocated"))
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if bits != 1 and bits % 8:
        raise InvalidInstance(f"BitsAllocated {bits} is not supported")
    frame_bits = rows * columns * samples * bits
    if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":
        frame_bits = frame_bits // 3 * 2  # two luminance samples share one chroma pair
    word = _swap_word(source_syntax, bits, value.vr)
    needed = -(-frame_bits * number_of_frames // 8)
    if value.length < needed:
        raise InvalidInstance(
            f"Pixel Data holds {value.length} bytes, {number_of_frames} frames of "
            f"{rows}x{columns}x{samples} at {bits} bits need {needed}"
        )
    needed += -needed % word  # a byte-swapped word may hold the pad byte
    file_size = fp.seek(0, io.SEEK_END)
    if value.offset + needed > file_size:
        raise InvalidInstance(
            f"file is truncated: Pixel Data needs {value.offset + needed} bytes, "
            f"file has {file_size}"
        )
    return lambda: _native_frames(fp, value.offset, frame_bits, number_of_frames, word)


def _swap_word(source_syntax: str, bits: int, vr: str) -> int:
    """Size of the words whose bytes a big endian file stores reversed (1: none).

    8-bit samples in an OW value are swapped in pairs, like pydicom's pixel_array;
    1-bit data is read as a byte stream in either byte order, as pydicom does.
    """
    if UID(source_syntax).is_little_endian or bits == 1:
        return 1
    if bits == 8:
        return 2 if vr == "OW" else 1
    return bits // 8


def _native_frames(
    fp: BinaryIO, offset: int, frame_bits: int, count: int, word: int
) -> Iterator[bytes]:
    """Each frame as little endian bytes starting at bit 0 of its first byte.

    1-bit frames are not byte aligned unless Rows*Columns is a multiple of 8: they are
    shifted down (LSB first, PS3.5 8.1.1) and unused bits of the last byte are zero.
    Swapped words may straddle frames (odd 8-bit OW frames), so reads are word aligned.
    """
    frame_length = -(-frame_bits // 8)
    for index in range(count):
        first_bit = index * frame_bits
        start = first_bit // 8 // word * word
        end = -(-(first_bit + frame_bits) // 8)
        end += -end % word
        fp.seek(offset + start)
        data = _read_exact(fp, end - start, f"frame {index + 1}")
        if word > 1:
            data = _swap_words(data, word)
        shift = first_bit - start * 8
        if shift % 8 == 0 and frame_bits % 8 == 0:
            skip = shift // 8
            yield data if len(data) == frame_length else data[skip : skip + frame_length]
        else:
            pixels = (int.from_bytes(data, "little") >> shift) & ((1 << frame_bits) - 1)
            yield pixels.to_bytes(frame_length, "little")


def _swap_words(data: bytes, word: int) -> bytes:
    """Reverse the byte order of each ``word``-byte word (big endian to little endian)."""
    swapped = bytearray(len(data))
    for byte in range(word):
        swapped[byte::word] = data[word - 1 - byte :: word]
    return bytes(swapped)


# -- encapsulated ----------------------------------------------------------------------


def _encapsulated_reader(
    fp: BinaryIO,
    dataset: Dataset,
    source_syntax: str,
    value: PixelDataValue,
    number_of_frames: int,
) -> Callable[[], Iterator[bytes]]:
    """Walk and check every item, assign fragments to frames, return a frame reader."""
    if value.length != _UNDEFINED_LENGTH:
        raise InvalidInstance("encapsulated Pixel Data must have undefined length")
    offsets, fragments = _walk_items(fp, value.offset)
    if not fragments:
        raise InvalidInstance("encapsulated Pixel Data has no fragments")
    frames = _plan_frames(fp, dataset, source_syntax, offsets, fragments, number_of_frames)
    return lambda: _read_fragment_frames(fp, frames)


def _walk_items(fp: BinaryIO, value_offset: int) -> tuple[list[int], list[Fragment]]:
    """The Basic Offset Table and every fragment, checked to lie within the file."""
    file_size = fp.seek(0, io.SEEK_END)
    position = value_offset
    items: list[Fragment] = []
    while True:
        fp.seek(position)
        header = fp.read(8)
        if len(header) < 8:
            raise InvalidInstance("file is truncated: encapsulated Pixel Data has no end")
        group, element, length = struct.unpack("<HHL", header)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise InvalidInstance(
                f"corrupt Pixel Data: found ({group:04X},{element:04X}) at byte {position} "
                "where an item was expected"
            )
        if length == _UNDEFINED_LENGTH or position + 8 + length > file_size:
            raise InvalidInstance(
                f"file is truncated or corrupt: Pixel Data item at byte {position} "
                f"of length {length} runs past the end of the file ({file_size} bytes)"
            )
        items.append((position + 8, length))
        position += 8 + length
    if not items:
        raise InvalidInstance("encapsulated Pixel Data has no Basic Offset Table item")
    (bot_offset, bot_length), fragments = items[0], items[1:]
    if bot_length % 4:
        raise InvalidInstance("corrupt Basic Offset Table: length is not a multiple of 4")
    fp.seek(bot_offset)
    bot = list(struct.unpack(f"<{bot_length // 4}L", fp.read(bot_length)))
    return bot, fragments


def _plan_frames(
    fp: BinaryIO,
    dataset: Dataset,
    source_syntax: str,
    basic_offsets: list[int],
    fragments: list[Fragment],
    number_of_frames: int,
) -> list[list[Fragment]]:
    """Which fragments make up each frame, from the first source that is consistent.

    The Extended Offset Table, then the Basic Offset Table; an inconsistent table
    is ignored (logged) rather than trusted. Without tables: one fragment per frame
    when the counts match, else the codestream start marker opens each frame.
    """
    # Item offsets are measured from the first fragment's item tag (PS3.5 A.4).
    first_item = fragments[0][0] - 8
    starts = {offset - 8 - first_item: index for index, (offset, _) in enumerate(fragments)}
    extended = _extended_offsets(dataset)
    if extended is not None:
        plan = _plan_from_extended(extended, starts, fragments, number_of_frames)
        if plan is not None:
            return plan
        log.warning("ignoring an Extended Offset Table that does not match the fragments")
    if basic_offsets:
        plan = _plan_from_offsets(basic_offsets, starts, fragments, number_of_frames)
        if plan is not None:
            return plan
        log.warning("ignoring a Basic Offset Table that does not match the fragments")
    if number_of_frames == 1:
        return [fragments]
    if len(fragments) == number_of_frames:
        return [[fragment] for fragment in fragments]
    if len(fragments) < number_of_frames:
        raise InvalidInstance(
            f"found {len(fragments)} fragments, fewer than NumberOfFrames {number_of_frames}"
        )
    return _plan_from_markers(fp, source_syntax, fragments, number_of_frames)


def _extended_offsets(dataset: Dataset) -> tuple[list[int], list[int]] | None:
    table, lengths = dataset.get("ExtendedOffsetTable"), dataset.get("ExtendedOffsetTableLengths")
    if not table or not lengths or len(table) % 8 or len(lengths) % 8:
        return None
    return (
        list(struct.unpack(f"<{len(table) // 8}Q", table)),
        list(struct.unpack(f"<{len(lengths) // 8}Q", lengths)),
    )


def _plan_from_extended(
    extended: tuple[list[int], list[int]],
    starts: dict[int, int],
    fragments: list[Fragment],
    number_of_frames: int,
) -> list[list[Fragment]] | None:
    offsets, lengths = extended
    if len(offsets) != number_of_frames or len(lengths) != number_of_frames:
        return None
    plan = _plan_from_offsets(offsets, starts, fragments, number_of_frames)
    if plan is None or any(
        len(frame) != 1 or frame[0][1] != length for frame, length in zip(plan, lengths)
    ):
        return None
    return plan


def _plan_from_offsets(
    offsets: list[int], starts: dict[int, int], fragments: list[Fragment], number_of_frames: int
) -> list[list[Fragment]] | None:
    """Group fragments by frame start offsets; ``None`` if the offsets are not item starts."""
    if len(offsets) != number_of_frames or offsets[0] != 0:
        return None
    indexes = [starts.get(offset) for offset in offsets]
    if None in indexes or any(a >= b for a, b in zip(indexes, indexes[1:])):
        return None
    bounds = [*indexes, len(fragments)]
    return [fragments[bounds[i] : bounds[i + 1]] for i in range(number_of_frames)]


def _plan_from_markers(
    fp: BinaryIO, source_syntax: str, fragments: list[Fragment], number_of_frames: int
) -> list[list[Fragment]]:
    """Several fragments per frame and no offset table: a frame opens with SOI/SOC.

    A continuation fragment cannot begin with these markers (JPEG stuffs 0xFF in
    entropy-coded data; JPEG 2000 forbids 0xFF4F there), whereas pydicom's EOI test
    misses an EOI split across two fragments.
    """
    markers = _CODESTREAM_STARTS.get(source_syntax)
    if markers is None:
        raise InvalidInstance(
            f"{len(fragments)} fragments for {number_of_frames} frames and no offset table: "
            f"frame boundaries of {UID(source_syntax).name} cannot be found"
        )
    plan: list[list[Fragment]] = []
    for fragment in fragments:
        fp.seek(fragment[0])
        head = fp.read(12)
        if any(head.startswith(marker) for marker in markers):
            plan.append([fragment])
        elif plan:
            plan[-1].append(fragment)
        else:
            raise InvalidInstance("first Pixel Data fragment does not start a codestream")
    if len(plan) != number_of_frames:
        raise InvalidInstance(
            f"found {len(plan)} codestreams in {len(fragments)} fragments, "
            f"NumberOfFrames is {number_of_frames}"
        )
    return plan


def _read_fragment_frames(fp: BinaryIO, plan: list[list[Fragment]]) -> Iterator[bytes]:
    for number, frame in enumerate(plan, start=1):
        parts = []
        for offset, length in frame:
            fp.seek(offset)
            parts.append(_read_exact(fp, length, f"frame {number}"))
        yield parts[0] if len(parts) == 1 else b"".join(parts)


# -- helpers ---------------------------------------------------------------------------


def _read_exact(fp: BinaryIO, size: int, what: str) -> bytes:
    data = fp.read(size)
    if len(data) != size:
        raise InvalidInstance(f"file is truncated in {what}")
    return data


def _required_int(dataset: Dataset, keyword: str) -> int:
    value = dataset.get(keyword)
    if value is None or value == "":
        raise InvalidInstance(f"{keyword} is missing")
    return int(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
