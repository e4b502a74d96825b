"""Realistic synthetic DICOM instances for tests, benches and demos.

Files are written streaming: pydicom writes the header (everything but Pixel Data),
then the Pixel Data element header and the frames are appended one by one, so a
2 GB tomosynthesis instance is written with the memory of one frame. Every frame
can be recomputed from the generation parameters, so a test can compare the bytes
the splitter emits with what was written without reading the file back.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from framecdn.framestore.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

BREAST_TOMOSYNTHESIS_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.13.1.3"
DIGITAL_MAMMOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

_NATIVE_WRITE_SYNTAXES = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_FAKE_PATIENTS = (
    ("DOE^JANE", "F"),
    ("ROE^MARY", "F"),
    ("SMITH^ANNA", "F"),
    ("MUSTERMANN^ERIKA", "F"),
    ("DUPONT^CLAIRE", "F"),
)


@dataclass(frozen=True)
class GeneratedInstance:
    """A file written by this module, and how to recompute each frame's DICOMweb bytes."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    #: Bytes per frame for native Pixel Data; ``None`` for encapsulated (frames vary).
    frame_length: int | None
    rows: int
    columns: int
    _frame: Callable[[int], bytes] = field(repr=False, compare=False)
    #: True when ``write_tomosynthesis(reuse=True)`` found the same file already written.
    reused: bool = field(default=False, compare=False)

    def frame(self, number: int) -> bytes:
        """Expected bytes of frame ``number`` (1-based, as in DICOMweb URLs).

        Native frames are little endian whatever the file's byte order; encapsulated
        frames are the codestream as stored (padded to even length).
        """
        if not 1 <= number <= self.number_of_frames:
            raise IndexError(f"frame {number} not in 1..{self.number_of_frames}")
        return self._frame(number)

    def frames(self) -> Iterator[bytes]:
        """Every expected frame, in order."""
        for number in range(1, self.number_of_frames + 1):
            yield self.frame(number)


def write_tomosynthesis(
    path: str | os.PathLike[str],
    *,
    frames: int = 60,
    rows: int = 2457,
    columns: int = 1890,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    transfer_syntax_uid: str = EXPLICIT_VR_LITTLE_ENDIAN,
    sop_class_uid: str = BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    include_number_of_frames: bool = True,
    pixel_data: bool = True,
    reuse: bool = False,
) -> GeneratedInstance:
    """Write a native MONOCHROME2 breast tomosynthesis instance, one frame at a time.

    ``transfer_syntax_uid`` may be Explicit VR LE (default), Implicit VR LE or Explicit
    VR Big Endian. ``bits_stored`` defaults to 12 (or 8 for 8-bit pixels).
    ``include_number_of_frames=False`` writes a single-frame style header
    (use with ``frames=1``); ``pixel_data=False`` leaves Pixel Data out entirely.
    ``reuse=True`` (with fixed UIDs) keeps a file already at ``path`` whose header and
    size are exactly what this call would write: the frames follow from the parameters.
    """
    if bits_allocated not in (8, 16, 32):
        raise ValueError("bits_allocated must be 8, 16 or 32")
    if bits_stored is None:
        bits_stored = min(12, bits_allocated)
    if transfer_syntax_uid not in _NATIVE_WRITE_SYNTAXES:
        raise ValueError(f"cannot write native Pixel Data as {transfer_syntax_uid}")
    path = Path(path)
    ds = _mammography_dataset(
        sop_class_uid=sop_class_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        seed=seed,
    )
    _set_image_pixel_module(
        ds,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        samples_per_pixel=1,
        photometric_interpretation="MONOCHROME2",
    )
    if include_number_of_frames:
        ds.NumberOfFrames = frames
    frame_length = rows * columns * bits_allocated // 8
    big_endian = transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN

    def expected(number: int) -> bytes:
        return _native_frame(rows, columns, bits_allocated, bits_stored, seed, number).tobytes()

    header = io.BytesIO()
    dcmwrite(header, ds, enforce_file_format=True)
    value_length = frames * frame_length
    vr = b"OB" if bits_allocated == 8 else b"OW"
    if pixel_data:
        # A value has even length (PS3.5 7.1.1): odd frames end with the pad byte in it.
        padded_length = value_length + value_length % 2
        header.write(_element_header(0x7FE00010, vr, padded_length, transfer_syntax_uid))
    size = header.tell() + (value_length + value_length % 2 if pixel_data else 0)
    reused = reuse and _has_header(path, header.getvalue(), size)
    if not reused:
        with open(path, "wb") as fp:
            fp.write(header.getvalue())
            if pixel_data:
                for number in range(1, frames + 1):
                    pixels = _native_frame(
                        rows, columns, bits_allocated, bits_stored, seed, number
                    )
                    fp.write((pixels.byteswap() if big_endian else pixels).tobytes())
                if value_length % 2:
                    fp.write(b"\x00")
    return GeneratedInstance(
        path=path,
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=transfer_syntax_uid,
        number_of_frames=frames,
        frame_length=frame_length,
        rows=rows,
        columns=columns,
        _frame=expected,
        reused=reused,
    )


def _has_header(path: Path, header: bytes, size: int) -> bool:
    """True when the file at ``path`` starts with ``header`` and is ``size`` bytes long."""
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as fp:
            return fp.read(len(header)) == header
    except OSError:
        return False


def write_encapsulated(
    path: str | os.PathLike[str],
    frames: Sequence[bytes],
    *,
    transfer_syntax_uid: str,
    rows: int,
    columns: int,
    samples_per_pixel: int = 1,
    bits_allocated: int = 8,
    bits_stored: int | None = None,
    photometric_interpretation: str = "MONOCHROME2",
    basic_offset_table: bool = True,
    fragments_per_frame: int = 1,
    extended_offset_table: bool = False,
    number_of_frames: int | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    seed: int = 0,
) -> GeneratedInstance:
    """Write an encapsulated multi-frame instance from ready-made codestreams.

    Each frame is padded to even length and cut into ``fragments_per_frame`` items.
    With ``extended_offset_table`` the Basic Offset Table is left empty (PS3.5 A.4)
    and (7FE0,0001)/(7FE0,0002) hold the offsets and lengths; that table requires one
    fragment per frame. ``number_of_frames`` overrides the NumberOfFrames written,
    to build inconsistent files.
    """
    if extended_offset_table and fragments_per_frame != 1:
        raise ValueError("an Extended Offset Table allows one fragment per frame only")
    path = Path(path)
    padded = [bytes(f) + b"\x00" if len(f) % 2 else bytes(f) for f in frames]
    fragmented = [_split_even(f, fragments_per_frame) for f in padded]
    item_offsets = []
    offset = 0
    for fragments in fragmented:
        item_offsets.append(offset)
        offset += sum(8 + len(fragment) for fragment in fragments)

    ds = _mammography_dataset(
        sop_class_uid=sop_class_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        seed=seed,
    )
    _set_image_pixel_module(
        ds,
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored or bits_allocated,
        samples_per_pixel=samples_per_pixel,
        photometric_interpretation=photometric_interpretation,
    )
    ds.NumberOfFrames = len(frames) if number_of_frames is None else number_of_frames
    if extended_offset_table:
        ds.ExtendedOffsetTable = struct.pack(f"<{len(padded)}Q", *item_offsets)
        ds.ExtendedOffsetTableLengths = struct.pack(
            f"<{len(padded)}Q", *(len(f) for f in padded)
        )
    bot = item_offsets if basic_offset_table and not extended_offset_table else []

    with open(path, "wb") as fp:
        dcmwrite(fp, ds, enforce_file_format=True)
        fp.write(_element_header(0x7FE00010, b"OB", _UNDEFINED_LENGTH, transfer_syntax_uid))
        _write_item(fp, struct.pack(f"<{len(bot)}L", *bot))
        for fragments in fragmented:
            for fragment in fragments:
                _write_item(fp, fragment)
        fp.write(struct.pack("<HHL", *_SEQUENCE_DELIMITER, 0))
    return GeneratedInstance(
        path=path,
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=transfer_syntax_uid,
        number_of_frames=len(padded),
        frame_length=None,
        rows=rows,
        columns=columns,
        _frame=lambda number: padded[number - 1],
    )


def _mammography_dataset(
    *,
    sop_class_uid: str,
    study_uid: str | None,
    series_uid: str | None,
    sop_uid: str | None,
    transfer_syntax_uid: str,
    seed: int,
) -> Dataset:
    """Patient, study, series and equipment attributes of a plausible screening exam."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)

    ds = Dataset()
    ds.file_meta = meta
    # One study, one patient: instances written into a given study share its patient
    # (Orthanc, for one, files instances of different patients into different series).
    patient = int(hashlib.sha256(study_uid.encode()).hexdigest()[:8], 16) if study_uid else seed
    name, sex = _FAKE_PATIENTS[patient % len(_FAKE_PATIENTS)]
    today = datetime.date(2024, 1, 1) + datetime.timedelta(days=seed % 365)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = f"ACC{seed:07d}"
    ds.Modality = "MG"
    ds.Manufacturer = "framecdn synthetic"
    ds.InstitutionName = "Synthetic Breast Center"
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    ds.StudyDescription = "MAMMOGRAPHY SCREENING BILATERAL DBT"
    ds.SeriesDescription = "L CC Tomosynthesis"
    ds.PatientName = name
    ds.PatientID = f"FCDN{patient % 1_000_000:06d}"
    ds.PatientBirthDate = "19680412"
    ds.PatientSex = sex
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = "CC"
    ds.ImageLaterality = "L"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "R"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    return ds


def _set_image_pixel_module(
    ds: Dataset,
    *,
    rows: int,
    columns: int,
    bits_allocated: int,
    bits_stored: int,
    samples_per_pixel: int,
    photometric_interpretation: str,
) -> None:
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric_interpretation
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.1, 0.1]


@functools.lru_cache(maxsize=4)
def _base_pattern(rows: int, columns: int, bits_stored: int, seed: int) -> np.ndarray:
    """One breast-like image (bright ellipse over dark background, with noise), made once."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]
    inside = np.clip(1.0 - (x / 0.8) ** 2 - (y / 0.9) ** 2, 0.0, 1.0)
    maximum = (1 << bits_stored) - 1
    tissue = np.sqrt(inside) * 0.7 * maximum
    noise = rng.integers(0, max(maximum // 16, 1), size=(rows, columns), dtype=np.uint32)
    pattern = tissue.astype(np.uint32) + noise
    pattern.flags.writeable = False
    return pattern  # type: ignore[no-any-return]  # numpy's addition is typed Any


def _native_frame(
    rows: int, columns: int, bits_allocated: int, bits_stored: int, seed: int, number: int
) -> np.ndarray:
    """Frame ``number``: the base pattern shifted by a per-frame offset (cheap, distinct)."""
    bits_stored = min(bits_stored, bits_allocated)
    base = _base_pattern(rows, columns, bits_stored, seed)
    mask = (1 << bits_stored) - 1
    shift = (number * 2654435761 + seed) % (mask + 1)
    return ((base + np.uint32(shift)) & np.uint32(mask)).astype(f"<u{bits_allocated // 8}")


def _element_header(tag: int, vr: bytes, length: int, transfer_syntax_uid: str) -> bytes:
    """Header of an OB/OW element in the dataset's encoding (PS3.5 7.1)."""
    group, element = tag >> 16, tag & 0xFFFF
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return struct.pack("<HHL", group, element, length)
    endian = ">" if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN else "<"
    return struct.pack(f"{endian}HH2s2xL", group, element, vr, length)


def _write_item(fp: BinaryIO, value: bytes) -> None:
    fp.write(struct.pack("<HHL", *_ITEM, len(value)))
    fp.write(value)


def _split_even(frame: bytes, parts: int) -> list[bytes]:
    """Cut an even-length frame into at most ``parts`` even-length, non-empty fragments."""
    if parts <= 1 or len(frame) <= 2:
        return [frame]
    size = -(-len(frame) // parts)
    size += size % 2
    return [frame[i : i + size] for i in range(0, len(frame), size)]
