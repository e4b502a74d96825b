"""The synthetic generator writes what it says, as pydicom reads it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from framecdn.framestore.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from framecdn.synthetic import (
    BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    write_encapsulated,
    write_tomosynthesis,
)


@pytest.mark.parametrize(
    "syntax", [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN]
)
@pytest.mark.parametrize("bits", [(8, 8), (16, 12), (32, 20)])
def test_tomosynthesis_pixels_match_expected_frames(tmp_path: Path, syntax, bits) -> None:
    made = write_tomosynthesis(
        tmp_path / "t.dcm", frames=3, rows=31, columns=17,
        bits_allocated=bits[0], bits_stored=bits[1], transfer_syntax_uid=syntax, seed=3,
    )
    ds = pydicom.dcmread(made.path)
    pixels = ds.pixel_array
    assert pixels.shape == (3, 31, 17)
    assert int(pixels.max()) < 1 << bits[1]
    for number in (1, 2, 3):
        assert pixels[number - 1].astype(f"<u{bits[0] // 8}").tobytes() == made.frame(number)
    assert made.frame(1) != made.frame(2)
    assert made.frame_length == 31 * 17 * bits[0] // 8


def test_tomosynthesis_header(tmp_path: Path) -> None:
    made = write_tomosynthesis(
        tmp_path / "t.dcm", frames=2, rows=8, columns=8, study_uid="1.2.3", series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
    )
    ds = pydicom.dcmread(made.path, stop_before_pixels=True)
    assert ds.SOPClassUID == BREAST_TOMOSYNTHESIS_IMAGE_STORAGE
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == "1.2.3.4.5"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2.3", "1.2.3.4")
    assert (ds.PhotometricInterpretation, ds.NumberOfFrames, ds.Modality) == (
        "MONOCHROME2", 2, "MG"
    )
    assert str(ds.PatientName)
    with pytest.raises(IndexError):
        made.frame(3)


def test_same_seed_same_frames_other_seed_other_frames(tmp_path: Path) -> None:
    a = write_tomosynthesis(tmp_path / "a.dcm", frames=2, rows=16, columns=16, seed=1)
    b = write_tomosynthesis(tmp_path / "b.dcm", frames=2, rows=16, columns=16, seed=1)
    c = write_tomosynthesis(tmp_path / "c.dcm", frames=2, rows=16, columns=16, seed=2)
    assert a.path.read_bytes()[-512:] == b.path.read_bytes()[-512:]
    assert a.frame(1) != c.frame(1)


@pytest.mark.parametrize(
    "layout",
    [
        dict(),
        dict(basic_offset_table=False),
        dict(fragments_per_frame=3),
        dict(extended_offset_table=True),
    ],
)
def test_encapsulated_readable_by_pydicom(tmp_path: Path, layout: dict) -> None:
    codestreams = [b"\xff\xd8" + bytes([n]) * (20 + n) + b"\xff\xd9" for n in range(1, 5)]
    made = write_encapsulated(
        tmp_path / "e.dcm", codestreams, transfer_syntax_uid="1.2.840.10008.1.2.4.50",
        rows=8, columns=8, **layout,
    )
    ds = pydicom.dcmread(made.path)
    extended = None
    if "ExtendedOffsetTable" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = list(generate_frames(ds.PixelData, number_of_frames=4, extended_offsets=extended))
    assert frames == list(made.frames())
    assert [f.rstrip(b"\x00") for f in frames] == codestreams


def test_large_file_is_written_streaming(tmp_path: Path) -> None:
    """560 MB at default DBT geometry; the frame recomputed matches the bytes on disk."""
    made = write_tomosynthesis(tmp_path / "big.dcm", frames=60)
    size = made.path.stat().st_size
    assert size > 60 * 2457 * 1890 * 2
    with open(made.path, "rb") as fp:
        fp.seek(size - made.frame_length)
        assert fp.read() == made.frame(60)
    assert np.frombuffer(made.frame(30), "<u2").max() < 4096
