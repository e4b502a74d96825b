"""Builders of the unusual DICOM files the splitter tests need: damaged, hostile, metadata-only.

Well-formed images come from :mod:`framecdn.synthetic`; these helpers take such a file
apart or write raw bytes, to make exactly one thing wrong at a time.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
GRAYSCALE_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
CONTENT_SEQUENCE = 0x0040A730


def pixel_data_header_offset(path: Path) -> int:
    """Byte offset of the top-level Pixel Data element header (as pydicom finds it)."""
    with open(path, "rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        return fp.tell()


def set_pixel_data_length(path: Path, length: int) -> None:
    """Overwrite the length field of an Explicit VR Little Endian Pixel Data element."""
    at = pixel_data_header_offset(path)
    data = bytearray(path.read_bytes())
    assert data[at : at + 4] == b"\xe0\x7f\x10\x00" and data[at + 4 : at + 6] in (b"OB", b"OW")
    data[at + 8 : at + 12] = struct.pack("<L", length)
    path.write_bytes(bytes(data))


def resave(path: Path, **attributes: object) -> Path:
    """Rewrite ``path`` with some attributes changed (``None`` deletes one)."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _file_meta(sop_class: str, sop_instance: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    return meta


def encode_dataset(ds: Dataset, *, implicit: bool = False) -> bytes:
    """A dataset encoded as (Explicit or Implicit) VR Little Endian, without file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def image_header(*, rows: int, columns: int, bits: int = 16, frames: int = 1) -> Dataset:
    """The attributes of a MONOCHROME2 image, without Pixel Data."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    return ds


def write_raw_file(
    target: Path | BinaryIO, ds: Dataset, syntax: str, body: bytes | Iterable[bytes]
) -> Path | BinaryIO:
    """Preamble, file meta for ``ds``, then ``body`` as the dataset's bytes, verbatim."""
    with contextlib.ExitStack() as stack:
        fp = stack.enter_context(open(target, "wb")) if isinstance(target, Path) else target
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax))
        for chunk in [body] if isinstance(body, bytes) else body:
            fp.write(chunk)
    return target


def write_sparse_native(path: Path, *, rows: int, columns: int, frames: int = 1) -> Path:
    """A 16-bit native file whose Pixel Data is all zeros and takes no disk (a sparse file)."""
    ds = image_header(rows=rows, columns=columns, frames=frames)
    length = rows * columns * 2 * frames
    header = encode_dataset(ds) + struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", length)
    write_raw_file(path, ds, ExplicitVRLittleEndian, header)
    with open(path, "r+b") as fp:
        fp.truncate(fp.seek(0, 2) + length)
    return path


def write_deflated(
    path: Path,
    ds: Dataset,
    pixel_length: int,
    pixel_chunks: Iterable[bytes],
    *,
    before_pixels: Iterable[bytes] = (),
) -> Path:
    """A Deflated Explicit VR LE file: ``ds``, raw ``before_pixels`` bytes, then a Pixel Data
    element of ``pixel_length`` whose value is ``pixel_chunks``."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)

    def body() -> Iterable[bytes]:
        yield deflater.compress(encode_dataset(ds))
        for chunk in before_pixels:
            yield deflater.compress(chunk)
        yield deflater.compress(struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", pixel_length))
        for chunk in pixel_chunks:
            yield deflater.compress(chunk)
        yield deflater.flush()

    return write_raw_file(path, ds, DeflatedExplicitVRLittleEndian, body())


def zeros(total: int, chunk: int = 1 << 20) -> Iterable[bytes]:
    block = bytes(chunk)
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def write_deflate_bomb(path: Path, *, inflated: int) -> Path:
    """A deflated single-frame image of ``inflated`` bytes of zeros (geometry consistent)."""
    columns = 16384
    rows = inflated // (columns * 2)
    ds = image_header(rows=rows, columns=columns)
    return write_deflated(path, ds, rows * columns * 2, zeros(rows * columns * 2))


def write_nested_sequences(path: Path, depth: int, *, defined_length: bool = False) -> Path:
    """An SR-like dataset whose Content Sequence nests ``depth`` levels deep, no Pixel Data."""
    ds = _report_header(BASIC_TEXT_SR_STORAGE, "SR")
    head = encode_dataset(ds)
    if defined_length:
        # Each level is a 12-byte sequence header and an 8-byte item header around the next.
        levels = []
        for level in range(depth):
            holds = 20 * (depth - level)
            levels.append(struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", holds - 12))
            levels.append(struct.pack("<HHL", 0xFFFE, 0xE000, holds - 20))
        body = head + b"".join(levels)
    else:
        opening = struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF) + struct.pack(
            "<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF
        )
        closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        body = head + opening * depth + closing * depth
    return write_raw_file(path, ds, ExplicitVRLittleEndian, body)


def _report_header(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240101"
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "FCDN000001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    return ds


def _text_item(relationship: str, meaning: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "121071", "DCM"
    concept.CodeMeaning = meaning
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    return item


def metadata_only_dataset(
    kind: str, *, study_uid: str | None = None, series_uid: str | None = None
) -> Dataset:
    """A minimal instance without Pixel Data: ``sr``, ``ko``, ``rtplan`` or ``pr``."""
    sop_class, modality = {
        "sr": (BASIC_TEXT_SR_STORAGE, "SR"),
        "ko": (KEY_OBJECT_SELECTION_STORAGE, "KO"),
        "rtplan": (RT_PLAN_STORAGE, "RTPLAN"),
        "pr": (GRAYSCALE_PRESENTATION_STATE_STORAGE, "PR"),
    }[kind]
    ds = _report_header(sop_class, modality)
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    if kind in ("sr", "ko"):
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.ContentSequence = Sequence([_text_item("CONTAINS", "Finding", "No evidence of cancer.")])
    elif kind == "rtplan":
        ds.RTPlanLabel = "BREAST L"
        ds.RTPlanGeometry = "PATIENT"
    else:
        ds.PresentationLabel = "SCREEN"
        ds.SoftcopyVOILUTSequence = Sequence([Dataset()])
        ds.SoftcopyVOILUTSequence[0].WindowCenter = 2048
        ds.SoftcopyVOILUTSequence[0].WindowWidth = 4096
    return ds


def write_metadata_only(
    path: Path, kind: str, *, syntax: str = ExplicitVRLittleEndian, **uids: str
) -> Dataset:
    """Write an instance without Pixel Data (see :func:`metadata_only_dataset`)."""
    ds = metadata_only_dataset(kind, **uids)
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax)
    ds.save_as(path, enforce_file_format=True)
    return ds
