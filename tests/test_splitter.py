"""The streaming frame splitter, byte-exact against pydicom's own frame extraction.

Pure tests: no S3. Bundled pydicom files cover the transfer syntax families; files
written by framecdn.synthetic cover what pydicom does not bundle (Extended Offset
Table, several fragments per frame, HTJ2K, Encapsulated Uncompressed), damaged files,
and the memory bound on instances of hundreds of megabytes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import pack_bits
from pydicom.uid import MPEG4HP41, RLELossless

from framecdn.framestore.transfer_syntax import (
    ENCAPSULATED_UNCOMPRESSED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from framecdn.ingest.splitter import InvalidInstance, open_instance
from framecdn.synthetic import write_encapsulated, write_tomosynthesis

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"

#: (file, what it covers): every family the splitter must handle.
BUNDLED = {
    "color3d_jpeg_baseline.dcm": "JPEG baseline, 120 frames, empty BOT, 1 fragment per frame",
    "examples_ybr_color.dcm": "JPEG baseline YBR, 30 frames with Basic Offset Table",
    "JPGExtended.dcm": "JPEG extended",
    "JPEG-LL.dcm": "JPEG lossless SV1",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless RGB",
    "SC_rgb_small_odd_jpeg.dcm": "JPEG odd-sized image",
    "emri_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless, 10 frames",
    "emri_small_jpeg_2k_lossless.dcm": "JPEG 2000 lossless, 10 frames",
    "US1_J2KI.dcm": "JPEG 2000 lossy RGB",
    "examples_jpeg2k.dcm": "JPEG 2000, one frame in three fragments",
    "emri_small_RLE.dcm": "RLE, 10 frames",
    "rtdose_rle.dcm": "RLE, 15 frames, empty BOT",
    "SC_rgb_rle_32bit_2frame.dcm": "RLE 32-bit RGB with BOT",
    "emri_small.dcm": "Explicit VR LE 16-bit, 10 frames",
    "MR_small_implicit.dcm": "Implicit VR LE",
    "rtdose.dcm": "Implicit VR LE 32-bit, 15 frames",
    "emri_small_big_endian.dcm": "Explicit VR Big Endian 16-bit, 10 frames",
    "SC_rgb_expb_32bit_2frame.dcm": "Big Endian 32-bit RGB",
    "SC_rgb_expb_16bit_2frame.dcm": "Big Endian 16-bit RGB",
    "OBXXXX1A_expb_2frame.dcm": "Big Endian 8-bit stored as OW (swapped in pairs)",
    "SC_rgb_small_odd_big_endian.dcm": "Big Endian 8-bit OW, odd length",
    "ExplVR_BigEnd.dcm": "Big Endian 8-bit OB RGB, planar configuration 1",
    "image_dfl.dcm": "Deflated Explicit VR LE",
    "liver.dcm": "1-bit segmentation, 3 frames",
    "liver_expb.dcm": "1-bit, Big Endian",
    "SC_rgb_32bit_2frame.dcm": "32-bit RGB",
    "SC_rgb_2frame.dcm": "RGB planar configuration 0",
    "color-pl.dcm": "RGB planar configuration 1",
    "SC_ybr_full_422_uncompressed.dcm": "native YBR_FULL_422 (2/3 of 3 samples)",
    "SC_rgb_small_odd.dcm": "odd length native with pad byte",
    "CT_small.dcm": "single frame, no NumberOfFrames",
    "MR_small_padded.dcm": "trailing padding",
}


def pydicom_frames(path: str | Path) -> list[bytes]:
    """What pydicom (loading everything) says each frame's DICOMweb bytes are."""
    ds = pydicom.dcmread(path)
    syntax = ds.file_meta.TransferSyntaxUID
    count = int(ds.get("NumberOfFrames") or 1)
    if syntax.is_encapsulated:
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return list(
            generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=extended)
        )
    if ds.BitsAllocated == 1:
        pixels = ds.pixel_array.reshape(count, -1)
        return [np.packbits(frame, bitorder="little").tobytes() for frame in pixels]
    planar = ds.get("SamplesPerPixel", 1) > 1 and ds.get("PlanarConfiguration", 0) == 1
    if planar or ds.PhotometricInterpretation == "YBR_FULL_422":
        assert syntax.is_little_endian or ds.BitsAllocated == 8  # raw bytes are LE then
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        if ds.PhotometricInterpretation == "YBR_FULL_422":
            size = size // 3 * 2
        return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]
    pixels = ds.pixel_array.reshape(count, -1)
    return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in pixels]


def split(source) -> tuple[list[bytes], object]:
    with open_instance(source) as instance:
        return list(instance.frames()), instance


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_file_frames_match_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    frames, instance = split(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pydicom_frames(path)
    assert len(frames) == instance.number_of_frames == len(expected)
    assert frames == expected
    assert "PixelData" not in instance.dataset
    assert instance.dataset.file_meta.TransferSyntaxUID == instance.source_transfer_syntax_uid


def test_native_sources_are_stored_as_explicit_little_endian() -> None:
    for name in ("MR_small_implicit.dcm", "emri_small_big_endian.dcm", "image_dfl.dcm"):
        with open_instance(get_testdata_file(name)) as instance:
            assert instance.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
            assert instance.media_type == "application/octet-stream"


def test_encapsulated_keeps_syntax_and_media_type() -> None:
    with open_instance(get_testdata_file("emri_small_jpeg_2k_lossless.dcm")) as instance:
        assert instance.transfer_syntax_uid == JPEG_2000_LOSSLESS
        assert instance.media_type == "image/jp2"
        assert instance.number_of_frames == 10


def test_big_endian_16_bit_equals_its_little_endian_twin() -> None:
    big, _ = split(get_testdata_file("emri_small_big_endian.dcm"))
    little, _ = split(get_testdata_file("emri_small.dcm"))
    assert big == little


def test_single_frame_without_number_of_frames(tmp_path: Path) -> None:
    made = write_tomosynthesis(
        tmp_path / "ffdm.dcm", frames=1, rows=64, columns=48, include_number_of_frames=False
    )
    frames, instance = split(made.path)
    assert instance.number_of_frames == 1
    assert frames == [made.frame(1)]


# -- synthetic native --------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax", [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN]
)
@pytest.mark.parametrize("bits", [(8, 8), (16, 12), (32, 24)])
def test_synthetic_native(tmp_path: Path, syntax: str, bits: tuple[int, int]) -> None:
    made = write_tomosynthesis(
        tmp_path / "t.dcm", frames=4, rows=33, columns=17,
        bits_allocated=bits[0], bits_stored=bits[1], transfer_syntax_uid=syntax, seed=5,
    )
    frames, instance = split(made.path)
    assert frames == list(made.frames())
    assert len(set(frames)) == 4
    assert str(instance.dataset.SOPInstanceUID) == made.sop_uid


def _one_bit_file(path: Path, rows: int, columns: int, count: int, syntax: str) -> np.ndarray:
    """A 1-bit multi-frame file whose frames do not start on byte boundaries."""
    made = write_tomosynthesis(path, frames=1, rows=rows, columns=columns, bits_allocated=8)
    ds = pydicom.dcmread(made.path)
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 2, size=(count, rows, columns), dtype=np.uint8)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.NumberOfFrames = count
    ds.PixelData = pack_bits(pixels)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return pixels


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
def test_one_bit_frames_not_byte_aligned_are_repacked(tmp_path: Path, syntax: str) -> None:
    path = tmp_path / "seg.dcm"
    pixels = _one_bit_file(path, rows=5, columns=7, count=9, syntax=syntax)  # 35 bits a frame
    frames, _ = split(path)
    expected = [np.packbits(frame.ravel(), bitorder="little").tobytes() for frame in pixels]
    assert frames == expected
    assert all(len(frame) == 5 for frame in frames)
    assert frames == pydicom_frames(path)


# -- synthetic encapsulated --------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_frames() -> list[bytes]:
    """Eight real JPEG baseline codestreams (odd and even lengths)."""
    ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    return [frame.rstrip(b"\x00") for _, frame in zip(range(8), frames, strict=False)]


@pytest.fixture(scope="module")
def j2k_frames() -> list[bytes]:
    ds = pydicom.dcmread(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    return list(generate_frames(ds.PixelData, number_of_frames=10))


def _padded(frames: list[bytes]) -> list[bytes]:
    return [frame + b"\x00" * (len(frame) % 2) for frame in frames]


@pytest.mark.parametrize(
    "layout",
    [
        dict(basic_offset_table=True),
        dict(basic_offset_table=False),
        dict(basic_offset_table=True, fragments_per_frame=4),
        dict(basic_offset_table=False, fragments_per_frame=3),
        dict(basic_offset_table=False, fragments_per_frame=7),
        dict(extended_offset_table=True),
    ],
    ids=["bot", "no-bot", "bot-4-fragments", "no-bot-3-fragments", "no-bot-7-fragments", "eot"],
)
def test_encapsulated_layouts(tmp_path: Path, jpeg_frames: list[bytes], layout: dict) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE,
        rows=100, columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
        **layout,
    )
    frames, instance = split(made.path)
    assert frames == list(made.frames()) == _padded(jpeg_frames)
    assert instance.media_type == "image/jpeg"


def test_eot_read_by_pydicom_too(tmp_path: Path, jpeg_frames: list[bytes]) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE,
        rows=100, columns=100, extended_offset_table=True,
    )
    assert split(made.path)[0] == pydicom_frames(made.path)


def test_frames_split_inside_the_eoi_marker(tmp_path: Path) -> None:
    """pydicom's EOI heuristic merges frames here; the start marker does not."""
    codestreams = [b"\xff\xd8" + bytes([i]) * 5 + b"\xff\xd9" for i in range(1, 4)]
    made = write_encapsulated(
        tmp_path / "e.dcm", codestreams, transfer_syntax_uid=JPEG_BASELINE,
        rows=8, columns=8, basic_offset_table=False, fragments_per_frame=3,
    )  # 10-byte frames cut 4+4+2: "FF D8 x x | x x x FF | D9 00", EOI spans two fragments
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom_frames(made.path) != list(made.frames())
    assert split(made.path)[0] == list(made.frames())


@pytest.mark.parametrize("syntax", [JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS])
def test_j2k_family_several_fragments_no_table(tmp_path: Path, j2k_frames, syntax) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", j2k_frames, transfer_syntax_uid=syntax, rows=64, columns=64,
        bits_allocated=16, basic_offset_table=False, fragments_per_frame=5,
    )
    frames, instance = split(made.path)
    assert frames == list(made.frames())
    assert instance.transfer_syntax_uid == syntax


def test_encapsulated_uncompressed(tmp_path: Path) -> None:
    native = write_tomosynthesis(tmp_path / "n.dcm", frames=3, rows=16, columns=16)
    made = write_encapsulated(
        tmp_path / "u.dcm", list(native.frames()), transfer_syntax_uid=ENCAPSULATED_UNCOMPRESSED,
        rows=16, columns=16, bits_allocated=16,
    )
    frames, instance = split(made.path)
    assert frames == list(native.frames())
    assert instance.media_type == "application/octet-stream"
    assert instance.transfer_syntax_uid == ENCAPSULATED_UNCOMPRESSED


def test_wrong_basic_offset_table_is_not_trusted(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100, columns=100
    )
    data = bytearray(made.path.read_bytes())
    bot_at = data.index(b"\xfe\xff\x00\xe0") + 8
    data[bot_at + 4 : bot_at + 8] = (12).to_bytes(4, "little")  # frame 2 "starts" mid-fragment
    made.path.write_bytes(bytes(data))
    assert split(made.path)[0] == list(made.frames())


def test_rle_several_fragments_per_frame_is_refused(tmp_path: Path) -> None:
    made = write_encapsulated(
        tmp_path / "r.dcm", [b"\x01" * 64, b"\x02" * 64], transfer_syntax_uid=RLELossless,
        rows=8, columns=8, basic_offset_table=False, fragments_per_frame=2,
    )
    with pytest.raises(InvalidInstance, match="frame boundaries"):
        split(made.path)


def test_fewer_codestreams_than_number_of_frames(tmp_path: Path, jpeg_frames) -> None:
    for layout in (
        dict(basic_offset_table=False),
        dict(basic_offset_table=False, fragments_per_frame=3),
        dict(),
    ):
        made = write_encapsulated(
            tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE,
            rows=100, columns=100, number_of_frames=len(jpeg_frames) + 2, **layout,
        )
        with pytest.raises(InvalidInstance, match=r"fewer|NumberOfFrames"):
            split(made.path)


# -- damaged and refused files -----------------------------------------------------------


def _cut(path: Path, size: int) -> Path:
    cut = path.with_name("cut-" + path.name)
    with open(path, "rb") as fp:
        cut.write_bytes(fp.read(size))
    return cut


def test_truncated_native_file(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=6, rows=64, columns=64)
    with pytest.raises(InvalidInstance, match="truncated"):
        split(_cut(made.path, made.path.stat().st_size // 2))


def test_truncated_encapsulated_file(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100, columns=100
    )
    size = made.path.stat().st_size
    for cut_at in (size // 2, size - 8, size - 4):
        with pytest.raises(InvalidInstance, match="truncated"):
            split(_cut(made.path, cut_at))


def test_truncated_header(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8)
    for size in (100, 140, 400):
        with pytest.raises(InvalidInstance):
            split(_cut(made.path, size))


def test_truncated_deflated_file(tmp_path: Path) -> None:
    path = Path(get_testdata_file("image_dfl.dcm"))
    with pytest.raises(InvalidInstance, match="deflated"):
        split(_cut(path, path.stat().st_size // 2))


def test_corrupt_item_tag(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100, columns=100
    )
    data = bytearray(made.path.read_bytes())
    third_item = [i for i in range(len(data) - 4) if data[i : i + 4] == b"\xfe\xff\x00\xe0"][2]
    data[third_item : third_item + 4] = b"\xfe\xff\x00\xe1"
    made.path.write_bytes(bytes(data))
    with pytest.raises(InvalidInstance, match="corrupt"):
        split(made.path)


def test_item_length_past_end_of_file(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100, columns=100
    )
    data = bytearray(made.path.read_bytes())
    last_item = data.rindex(b"\xfe\xff\x00\xe0")
    data[last_item + 4 : last_item + 8] = (10_000_000).to_bytes(4, "little")
    made.path.write_bytes(bytes(data))
    with pytest.raises(InvalidInstance, match="past the end"):
        split(made.path)


def test_missing_uids(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        ds = pydicom.dcmread(made.path)
        delattr(ds, keyword)
        path = tmp_path / f"no-{keyword}.dcm"
        ds.save_as(path)
        with pytest.raises(InvalidInstance, match=keyword):
            split(path)


def test_invalid_uid(tmp_path: Path) -> None:
    made = write_tomosynthesis(
        tmp_path / "t.dcm", frames=2, rows=8, columns=8, series_uid="1.2.3/../../evil"
    )
    with pytest.raises(InvalidInstance, match="SeriesInstanceUID"):
        split(made.path)


def test_not_dicom(tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(np.random.default_rng(1).bytes(4096))
    text = tmp_path / "notes.txt"
    text.write_text("Patient called, will reschedule.\n" * 20)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path in (random_bytes, text, empty):
        with pytest.raises(InvalidInstance, match="not a DICOM"):
            split(path)


def test_no_pixel_data(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8, pixel_data=False)
    with pytest.raises(InvalidInstance, match="no Pixel Data"):
        split(made.path)


def test_pixel_data_shorter_than_frames(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=3, rows=8, columns=8)
    ds = pydicom.dcmread(made.path)
    ds.NumberOfFrames = 4
    ds.save_as(made.path)
    with pytest.raises(InvalidInstance, match="need"):
        split(made.path)


def test_video_syntax_refused(tmp_path: Path) -> None:
    made = write_encapsulated(
        tmp_path / "v.dcm", [b"\x00\x00\x01\xb3" * 8], transfer_syntax_uid=MPEG4HP41,
        rows=8, columns=8,
    )
    with pytest.raises(InvalidInstance, match="video"):
        split(made.path)


# -- sources ---------------------------------------------------------------------------


class _Pipe(io.RawIOBase):
    """A readable stream that cannot seek, like an HTTP body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), 7000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize(
    "name", ["emri_small_jpeg_2k_lossless.dcm", "emri_small_big_endian.dcm", "image_dfl.dcm"]
)
def test_non_seekable_stream_is_spooled_and_cleaned_up(tmp_path: Path, name: str) -> None:
    path = get_testdata_file(name)
    spool = tmp_path / "spool"
    spool.mkdir()
    with open_instance(_Pipe(Path(path).read_bytes()), spool_dir=str(spool)) as instance:
        frames = list(instance.frames())
    assert frames == split(path)[0]
    assert os.listdir(spool) == []


def test_seekable_file_object(jpeg_frames) -> None:
    path = get_testdata_file("examples_ybr_color.dcm")
    with open(path, "rb") as fp:
        assert split(fp)[0] == split(path)[0]
        assert not fp.closed  # the caller's file stays the caller's


def test_frames_can_be_read_twice() -> None:
    with open_instance(get_testdata_file("emri_small.dcm")) as instance:
        assert list(instance.frames()) == list(instance.frames())


# -- memory ----------------------------------------------------------------------------

_CHILD = """
import resource, sys
from framecdn.ingest.splitter import open_instance
source = sys.stdin.buffer if sys.argv[1] == "-" else sys.argv[1]
with open_instance(source, spool_dir=sys.argv[2]) as instance:
    count = sum(1 for _ in instance.frames())
assert count == instance.number_of_frames, count
# VmHWM: this process's own peak; ru_maxrss would carry the forking parent's peak over exec
with open("/proc/self/status") as status:
    peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
print(int(peak[0]) // 1024 if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak_rss_mb(path: Path, tmp_path: Path, *, stdin: bool = False) -> int:
    """Split ``path`` in a fresh interpreter and return its peak RSS in MB."""
    with open(path, "rb") as body:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, "-" if stdin else str(path), str(tmp_path)],
            stdin=body if stdin else subprocess.DEVNULL,
            capture_output=True, text=True, check=True, timeout=120,
        )
    return int(done.stdout.strip())


def test_peak_memory_does_not_grow_with_instance_size(tmp_path: Path) -> None:
    """10 MB frames: 10 frames (105 MB) vs 40 frames (420 MB), file and stream input."""
    shape = dict(rows=2560, columns=2048)
    small = write_tomosynthesis(tmp_path / "small.dcm", frames=10, **shape)
    big = write_tomosynthesis(tmp_path / "big.dcm", frames=40, seed=1, **shape)
    rss_small = _peak_rss_mb(small.path, tmp_path)
    rss_big = _peak_rss_mb(big.path, tmp_path)
    rss_stream = _peak_rss_mb(big.path, tmp_path, stdin=True)
    print(f"peak RSS: 10 frames {rss_small} MB, 40 frames {rss_big} MB, "
          f"40 frames piped {rss_stream} MB")
    assert rss_big < 200 and rss_stream < 200
    assert rss_big - rss_small < 30
    assert rss_stream - rss_small < 30


def test_peak_memory_big_endian(tmp_path: Path) -> None:
    made = write_tomosynthesis(
        tmp_path / "be.dcm", frames=30, rows=2560, columns=2048,
        transfer_syntax_uid=EXPLICIT_VR_BIG_ENDIAN,
    )
    rss = _peak_rss_mb(made.path, tmp_path)
    print(f"peak RSS big endian 30 x 10 MB: {rss} MB")
    assert rss < 200
