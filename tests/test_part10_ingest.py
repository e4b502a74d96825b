"""Ingest keeps the original bytes: part10 object + frame objects stitch to the file (#20 item 2).

Every file is ingested into the real store, then its part10 object and frames are read
back with boto3 and stitched: the SHA-256 must equal the source file's.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from framecdn.framestore.index import InstanceIndex
from framecdn.framestore.keys import KeyLayout, parse_object_key
from framecdn.framestore.part10 import FrameRange, Literal, Part10, stitch
from framecdn.ingest.pipeline import ingest_file
from framecdn.synthetic import write_encapsulated, write_tomosynthesis
from tests.dicom_files import write_metadata_only

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _get(client, settings, key: str, byte_range: str | None = None) -> bytes:
    extra = {"Range": byte_range} if byte_range else {}
    return client.get_object(Bucket=settings.bucket, Key=key, **extra)["Body"].read()


def _part10(client, settings, index: InstanceIndex) -> Part10:
    layout = KeyLayout(settings.prefix)
    entry = index.part10
    assert entry is not None, "no part10 object named by the index"
    raw = _get(client, settings, layout.part10_of(index))
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == (entry.size, entry.sha256)
    part10 = Part10.from_bytes(raw)
    part10.check_frames([frame.size for frame in index.frames])
    return part10


def _stitch(client, settings, index: InstanceIndex, part10: Part10) -> bytes:
    layout = KeyLayout(settings.prefix)

    async def read_frame(number: int, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        key = layout.frame_of(index, number)
        return _get(client, settings, key, f"bytes={offset}-{offset + length - 1}")

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in stitch(part10, read_frame)])

    return asyncio.run(collect())


def _assert_byte_exact(client, settings, path: Path | str) -> Part10:
    index = ingest_file(path, settings)
    part10 = _part10(client, settings, index)
    source = Path(path).read_bytes()
    assert part10.total_length == len(source)
    rebuilt = _stitch(client, settings, index, part10)
    assert hashlib.sha256(rebuilt).hexdigest() == hashlib.sha256(source).hexdigest()
    # Breaking the stitching breaks the equality: every segment matters.
    for dropped in range(len(part10.segments)):
        if part10.segments[dropped].length == 0:
            continue
        broken = Part10(
            part10.number_of_frames, part10.segments[:dropped] + part10.segments[dropped + 1 :]
        )
        assert _stitch(client, settings, index, broken) != source
        if dropped > 3:  # the first few are enough to show it, per file
            break
    return part10


def _append_trailing(path: Path, *, implicit: bool) -> None:
    """A private element and Data Set Trailing Padding after Pixel Data."""

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if implicit:
            return struct.pack("<HHL", group, elem, len(value)) + value
        if vr in (b"OB", b"OW", b"UN"):
            return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    with path.open("ab") as fp:
        fp.write(element(0x7FE1, 0x0010, b"LO", b"ACME"))
        fp.write(element(0x7FE1, 0x1001, b"OB", b"\x01\x02\x03\x04"))
        fp.write(element(0xFFFC, 0xFFFC, b"OB", b"\x00" * 6))


def _frame_ranges(part10: Part10) -> list[FrameRange]:
    return [s for s in part10.segments if isinstance(s, FrameRange)]


@pytest.mark.parametrize(
    ("syntax", "bits", "rows", "columns", "trailing"),
    [
        (EXPLICIT, 16, 12, 10, False),
        (EXPLICIT, 8, 3, 3, False),  # odd frames: 27 bytes each, odd value, a pad byte
        (EXPLICIT, 8, 3, 3, True),
        (IMPLICIT, 16, 12, 10, False),
        (IMPLICIT, 8, 5, 3, True),
    ],
    ids=["explicit-16", "explicit-8-odd", "explicit-odd-trailing", "implicit-16",
         "implicit-odd-trailing"],
)
def test_native(s3_client, settings, tmp_path, syntax, bits, rows, columns, trailing) -> None:
    made = write_tomosynthesis(
        tmp_path / "n.dcm", frames=3, rows=rows, columns=columns, bits_allocated=bits,
        transfer_syntax_uid=syntax,
    )
    if trailing:
        _append_trailing(made.path, implicit=syntax == IMPLICIT)
    part10 = _assert_byte_exact(s3_client, settings, made.path)
    assert [r.number for r in _frame_ranges(part10)] == [1, 2, 3]


@pytest.fixture(scope="module")
def jpeg_frames() -> list[bytes]:
    """Real JPEG baseline codestreams of odd and even lengths."""
    ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    return [frame.rstrip(b"\x00") for _, frame in zip(range(4), frames, strict=False)]


@pytest.fixture(scope="module")
def j2k_frames() -> list[bytes]:
    ds = pydicom.dcmread(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    return list(generate_frames(ds.PixelData, number_of_frames=10))[:4]


@pytest.mark.parametrize(
    "layout",
    [
        dict(basic_offset_table=True),
        dict(basic_offset_table=False),
        dict(basic_offset_table=True, fragments_per_frame=4),
        dict(basic_offset_table=False, fragments_per_frame=3),
        dict(extended_offset_table=True),
    ],
    ids=["bot", "no-bot", "bot-4-fragments", "no-bot-3-fragments", "eot"],
)
@pytest.mark.parametrize("trailing", [False, True], ids=["", "trailing"])
def test_jpeg_layouts(s3_client, settings, tmp_path, jpeg_frames, layout, trailing) -> None:
    made = write_encapsulated(
        tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE,
        rows=100, columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
        **layout,
    )
    if trailing:
        _append_trailing(made.path, implicit=False)
    part10 = _assert_byte_exact(s3_client, settings, made.path)
    fragments = layout.get("fragments_per_frame", 1)
    assert len(_frame_ranges(part10)) == fragments * len(jpeg_frames)


def test_j2k_several_fragments(s3_client, settings, tmp_path, j2k_frames) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", j2k_frames, transfer_syntax_uid=JPEG_2000_LOSSLESS, rows=64,
        columns=64, bits_allocated=16, basic_offset_table=False, fragments_per_frame=5,
    )
    _append_trailing(made.path, implicit=False)
    part10 = _assert_byte_exact(s3_client, settings, made.path)
    assert len(_frame_ranges(part10)) == 5 * len(j2k_frames)


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000, 10 frames
        "emri_small_RLE.dcm",  # RLE, 10 frames
        "SC_rgb_rle_2frame.dcm",  # RLE RGB
        "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG baseline
        "JPEG-lossy.dcm",  # JPEG extended
        "JPEG-LL.dcm",  # JPEG lossless SV1
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
        "MR_small_implicit.dcm",  # native implicit VR
        "CT_small.dcm",  # native explicit VR
        "liver.dcm",  # native multi-frame
    ],
)
def test_pydicom_files(s3_client, settings, tmp_path, name) -> None:
    path = tmp_path / name
    shutil.copyfile(get_testdata_file(name), path)
    _assert_byte_exact(s3_client, settings, path)


@pytest.mark.parametrize("name", ["image_dfl.dcm", "MR_small_bigendian.dcm"])
def test_no_part10_when_frames_are_not_the_files_bytes(s3_client, settings, name) -> None:
    """Deflated (frames stored inflated) and big endian (frames stored swapped)."""
    index = ingest_file(get_testdata_file(name), settings)
    assert index.part10 is None
    assert index.number_of_frames == 1


@pytest.mark.parametrize("kind", ["sr", "pr"])
def test_a_metadata_only_instance_is_all_literal(s3_client, settings, tmp_path, kind) -> None:
    path = tmp_path / f"{kind}.dcm"
    write_metadata_only(path, kind, syntax=IMPLICIT)
    part10 = _assert_byte_exact(s3_client, settings, path)
    assert part10.number_of_frames == 0
    assert all(isinstance(s, Literal) for s in part10.segments)


def test_the_object_lives_in_the_generation_and_goes_with_it(s3_client, settings, tmp_path):
    made = write_tomosynthesis(tmp_path / "n.dcm", frames=2, rows=8, columns=8)
    first = ingest_file(made.path, settings)
    layout = KeyLayout(settings.prefix)
    parsed = parse_object_key(layout.part10_of(first))
    assert parsed is not None and parsed.part == "part10"
    assert parsed.generation == first.generation
    second = ingest_file(made.path, settings, force=True)
    assert second.generation != first.generation
    listed = s3_client.list_objects_v2(Bucket=settings.bucket, Prefix=layout.part10_of(first))
    assert listed.get("KeyCount", 0) == 0  # removed with the replaced generation
    _part10(s3_client, settings, second)


def test_too_many_literal_bytes_store_no_part10(s3_client, settings, tmp_path, monkeypatch):
    import framecdn.ingest.remainder as remainder

    monkeypatch.setattr(remainder, "MAX_LITERAL_BYTES", 100)
    made = write_tomosynthesis(tmp_path / "n.dcm", frames=2, rows=8, columns=8)
    index = ingest_file(made.path, settings)
    assert index.part10 is None and index.number_of_frames == 2
