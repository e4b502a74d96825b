"""Malformed and hostile files found by probing the splitter (issue #8), one test per fault.

Each file is refused with a one-line :class:`InvalidInstance` reason, in bounded time,
memory and disk, and nothing is read that the file cannot back. Big and hostile cases
run in a child interpreter with resource limits, so a regression fails the test
instead of the machine.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from framecdn.ingest.splitter import InflateLimits, InvalidInstance, open_instance
from framecdn.synthetic import write_encapsulated, write_tomosynthesis
from tests.dicom_files import (
    encode_dataset,
    image_header,
    resave,
    set_pixel_data_length,
    write_deflate_bomb,
    write_deflated,
    write_nested_sequences,
    write_raw_file,
    write_sparse_native,
    zeros,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MiB = 1 << 20


def split(path: Path, **options) -> list[bytes]:
    with open_instance(path, **options) as instance:
        return list(instance.frames())


def refused(path: Path, match: str, **options) -> str:
    """Assert the file is refused with a one-line reason matching ``match``; return it."""
    with pytest.raises(InvalidInstance, match=match) as caught:
        split(path, **options)
    reason = str(caught.value)
    assert reason and "\n" not in reason
    return reason


@pytest.fixture(scope="module")
def rle_frames() -> list[bytes]:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    return list(generate_frames(ds.PixelData, number_of_frames=2))


@pytest.fixture(scope="module")
def jpeg_frames() -> list[bytes]:
    ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    return list(itertools.islice(frames, 3))


# -- 1. declared lengths the file cannot back --------------------------------------------


def test_native_pixel_data_length_past_the_end_of_the_file(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8)
    set_pixel_data_length(made.path, 2 * 8 * 8 * 2 + 4096)  # frames fit, the element does not
    refused(made.path, "past the end of the file")


def test_single_frame_declaring_a_gigabyte_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    write_sparse_native(path, rows=32768, columns=16384)  # 1 GiB of Pixel Data...
    with open(path, "r+b") as fp:
        fp.truncate(fp.seek(0, 2) - (1 << 30) + 4096)  # ...of which 4 KiB are in the file
    tracemalloc.start()
    try:
        refused(path, "past the end of the file|truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


# -- 2. NumberOfFrames must agree with the frames present -------------------------------


def test_native_number_of_frames_smaller_than_the_frames_present(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=3, rows=8, columns=8)
    resave(made.path, NumberOfFrames=2)
    reason = refused(made.path, "NumberOfFrames")
    assert "3 frames" in reason or "384" in reason


def test_native_padding_of_less_than_a_frame_is_accepted(tmp_path: Path) -> None:
    """As pydicom (PS3.5 8.1.1): excess shorter than a frame is padding, a frame more is not."""
    eight_bits = dict(bits_allocated=8, bits_stored=8)
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=1, rows=3, columns=3, **eight_bits)
    assert split(made.path) == [made.frame(1)]  # 9 bytes stored as 10
    made = write_tomosynthesis(tmp_path / "u.dcm", frames=2, rows=4, columns=3, **eight_bits)
    with open(made.path, "ab") as fp:
        fp.write(bytes(12))
    for length, accepted in ((24, True), (30, True), (34, True), (36, False)):
        set_pixel_data_length(made.path, length)
        if accepted:
            assert split(made.path) == list(made.frames()), length
        else:
            assert "room for 3 frames" in refused(made.path, "NumberOfFrames 2 is smaller")


def test_rle_number_of_frames_one_while_the_offset_table_lists_two(
    tmp_path: Path, rle_frames: list[bytes]
) -> None:
    made = write_encapsulated(
        tmp_path / "r.dcm", rle_frames, transfer_syntax_uid=RLELossless, rows=100, columns=100,
        samples_per_pixel=3, photometric_interpretation="RGB", number_of_frames=1,
    )
    refused(made.path, "Basic Offset Table lists 2 frames, NumberOfFrames is 1")


def test_rle_number_of_frames_one_with_two_fragments_and_no_table(
    tmp_path: Path, rle_frames: list[bytes]
) -> None:
    made = write_encapsulated(
        tmp_path / "r.dcm", rle_frames, transfer_syntax_uid=RLELossless, rows=100, columns=100,
        samples_per_pixel=3, photometric_interpretation="RGB", number_of_frames=1,
        basic_offset_table=False,
    )
    refused(made.path, "one fragment")


def test_jpeg_number_of_frames_one_with_two_codestreams(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", jpeg_frames[:2], transfer_syntax_uid=JPEG_BASELINE, rows=100,
        columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
        number_of_frames=1, basic_offset_table=False,
    )
    refused(made.path, "2 codestreams")


def test_jpeg_offset_table_hiding_a_third_codestream(tmp_path: Path, jpeg_frames) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100,
        columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
    )
    # Keep three fragments but let NumberOfFrames and the table speak of two.
    data = bytearray(made.path.read_bytes())
    bot = data.index(b"\xfe\xff\x00\xe0")
    assert data[bot + 4 : bot + 8] == (12).to_bytes(4, "little")
    data[bot + 4 : bot + 8] = (8).to_bytes(4, "little")
    del data[bot + 16 : bot + 20]
    made.path.write_bytes(bytes(data))
    resave(made.path, NumberOfFrames=2)
    refused(made.path, "codestream")


# -- 3. geometry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "value", "match"),
    [
        ("Rows", 0, "Rows"),
        ("Columns", 0, "Columns"),
        ("BitsAllocated", 0, "BitsAllocated"),
        ("BitsAllocated", 7, "BitsAllocated"),
        ("BitsAllocated", 12, "BitsAllocated"),
        ("BitsStored", 17, "BitsStored"),
        ("SamplesPerPixel", 0, "SamplesPerPixel"),
        ("SamplesPerPixel", 2, "SamplesPerPixel"),
        ("PhotometricInterpretation", None, "PhotometricInterpretation"),
    ],
)
def test_native_geometry_must_be_possible(tmp_path: Path, attribute, value, match) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=8, columns=8)
    resave(made.path, **{attribute: value})
    refused(made.path, match)


@pytest.mark.parametrize(
    ("attribute", "value", "match"),
    [
        ("BitsAllocated", 7, "BitsAllocated"),
        ("BitsAllocated", 0, "BitsAllocated"),
        ("BitsStored", 12, "BitsStored"),
        ("Rows", 0, "Rows"),
        ("Columns", 0, "Columns"),
        ("SamplesPerPixel", 5, "SamplesPerPixel"),
        ("PhotometricInterpretation", None, "PhotometricInterpretation"),
    ],
)
def test_encapsulated_geometry_is_checked_too(
    tmp_path: Path, jpeg_frames, attribute, value, match
) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100,
        columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
    )
    resave(made.path, **{attribute: value})
    refused(made.path, match)


def test_rle_segments_must_match_the_samples(tmp_path: Path, rle_frames) -> None:
    made = write_encapsulated(
        tmp_path / "r.dcm", rle_frames, transfer_syntax_uid=RLELossless, rows=100, columns=100,
        samples_per_pixel=1, photometric_interpretation="MONOCHROME2",  # frames hold 3 segments
    )
    refused(made.path, "segments")


def test_encapsulated_uncompressed_frame_size_must_match(tmp_path: Path) -> None:
    made = write_encapsulated(
        tmp_path / "u.dcm", [bytes(64), bytes(64)], rows=8, columns=8, bits_allocated=16,
        transfer_syntax_uid="1.2.840.10008.1.2.1.98",
    )
    refused(made.path, "128 bytes")


# -- 4. deflate bombs -------------------------------------------------------------------

_BOMB_CHILD = textwrap.dedent(
    """
    import resource, signal, sys, time
    from framecdn.ingest.splitter import InvalidInstance, open_instance
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails, not kills
    limit = int(sys.argv[3]) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    started = time.process_time()
    try:
        with open_instance(sys.argv[1], spool_dir=sys.argv[2]) as instance:
            for frame in instance.frame_readers():
                for chunk in frame.chunks(1 << 20):
                    pass
        print("ACCEPTED")
    except InvalidInstance as exc:
        print("REFUSED", exc)
    print(f"cpu {time.process_time() - started:.2f}")
    """
)


def _split_limited(path: Path, tmp_path: Path, spool_limit_mb: int) -> tuple[str, float]:
    """Split in a child that may write ``spool_limit_mb`` per file and map 1 GiB in all."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(path), str(spool), str(spool_limit_mb)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, cpu = done.stdout.strip().splitlines()
    assert os.listdir(spool) == []
    return outcome, float(cpu.split()[1])


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    write_deflate_bomb(path, inflated=1 << 30)
    assert path.stat().st_size < 2 * MiB
    return path


def test_deflate_bomb_is_refused_before_inflating_it(gigabyte_bomb: Path, tmp_path: Path) -> None:
    """1 GiB of zeros in about 1 MiB: refused at the Pixel Data header, nothing spooled."""
    outcome, cpu = _split_limited(gigabyte_bomb, tmp_path, spool_limit_mb=1)
    assert outcome.startswith("REFUSED") and "inflate" in outcome, outcome
    assert cpu < 5, cpu


def test_deflate_bomb_hidden_in_an_element_before_pixel_data(tmp_path: Path) -> None:
    """A 1 GiB private OB value before Pixel Data: stopped at that element."""
    ds = image_header(rows=4, columns=4)
    path = tmp_path / "hidden.dcm"
    private = b"\x09\x00\x00\x10OB\x00\x00" + (1 << 30).to_bytes(4, "little")
    write_deflated(path, ds, 32, [bytes(32)], before_pixels=[private, *zeros(1 << 30)])
    outcome, cpu = _split_limited(path, tmp_path, spool_limit_mb=1)
    assert outcome.startswith("REFUSED") and "inflate" in outcome, outcome
    assert cpu < 5, cpu


def test_inflate_ratio_limit_stops_a_bomb_with_small_declared_lengths(tmp_path: Path) -> None:
    """Zeros after a small Pixel Data: nothing is impossible, the ratio limit stops it."""
    ds = image_header(rows=4, columns=4)
    path = write_deflated(tmp_path / "tail.dcm", ds, 32, zeros(256 * MiB))
    outcome, cpu = _split_limited(path, tmp_path, spool_limit_mb=64)
    assert outcome.startswith("REFUSED") and "200:1" in outcome, outcome
    assert cpu < 10, cpu


def test_inflate_limits_are_configurable(tmp_path: Path) -> None:
    ds = image_header(rows=1024, columns=16384)  # 32 MiB of zeros, ratio about 1000:1
    path = write_deflated(tmp_path / "zeros.dcm", ds, 32 * MiB, zeros(32 * MiB))
    refused(path, "inflate to \\(16777216 bytes")  # 16 MiB allowed before the ratio applies
    generous = InflateLimits(max_ratio=2000, max_bytes=64 * MiB)
    assert split(path, limits=generous) == [bytes(32 * MiB)]
    stingy = InflateLimits(max_ratio=2000, max_bytes=8 * MiB)
    refused(path, "inflate to \\(8388608 bytes", limits=stingy)


def test_deflated_file_within_limits_is_still_split(tmp_path: Path) -> None:
    expected = [bytes(range(256)) * 2]
    ds = image_header(rows=16, columns=16, bits=16)
    ds.Rows = 16
    path = write_deflated(tmp_path / "ok.dcm", ds, 512, [expected[0]])
    assert split(path) == expected


# -- 5. a frame larger than the memory budget --------------------------------------------

_CHUNK_CHILD = textwrap.dedent(
    """
    import hashlib, sys
    from framecdn.ingest.splitter import open_instance
    with open_instance(sys.argv[1]) as instance:
        sizes, digests = [], []
        for frame in instance.frame_readers():
            digest = hashlib.sha256()
            for chunk in frame.chunks(8 << 20):
                assert len(chunk) <= 8 << 20
                digest.update(chunk)
            sizes.append(frame.size)
            digests.append(digest.hexdigest())
    with open("/proc/self/status") as status:
        peak = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")][0]
    print(sizes, digests, peak // 1024)
    """
)


def test_a_gigabyte_frame_is_handed_out_in_chunks(tmp_path: Path) -> None:
    """One 1 GiB frame (a sparse file): read whole by nobody, peak RSS far below it."""
    path = write_sparse_native(tmp_path / "huge.dcm", rows=32768, columns=16384)
    done = subprocess.run(
        [sys.executable, "-c", _CHUNK_CHILD, str(path)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    peak_mb = int(done.stdout.split()[-1])
    zeros_digest = hashlib.sha256()
    for chunk in zeros(1 << 30, 64 * MiB):
        zeros_digest.update(chunk)
    assert f"[{1 << 30}]" in done.stdout
    assert zeros_digest.hexdigest() in done.stdout
    assert peak_mb < 150, peak_mb


def test_frame_readers_agree_with_frames(tmp_path: Path, jpeg_frames) -> None:
    cases = [
        write_tomosynthesis(tmp_path / "n.dcm", frames=3, rows=33, columns=17).path,
        write_encapsulated(
            tmp_path / "e.dcm", jpeg_frames, transfer_syntax_uid=JPEG_BASELINE, rows=100,
            columns=100, samples_per_pixel=3, photometric_interpretation="YBR_FULL_422",
            fragments_per_frame=3,
        ).path,
        Path(get_testdata_file("liver.dcm")),  # 1-bit frames not on byte boundaries
        Path(get_testdata_file("OBXXXX1A_expb_2frame.dcm")),  # swapped words across frames
        Path(get_testdata_file("SC_rgb_small_odd_big_endian.dcm")),
    ]
    for path in cases:
        with open_instance(path) as instance:
            whole = list(instance.frames())
            readers = list(instance.frame_readers())
            assert [reader.number for reader in readers] == list(range(1, len(whole) + 1))
            assert [reader.size for reader in readers] == [len(frame) for frame in whole]
            for chunk_size in (1, 2, 3, 7, 1000, 1 << 20):
                chunked = [b"".join(reader.chunks(chunk_size)) for reader in readers]
                assert chunked == whole, (path.name, chunk_size)
            assert instance.frame_reader(len(whole)).read() == whole[-1]


# -- 6. nesting -------------------------------------------------------------------------


@pytest.mark.parametrize("defined_length", [False, True], ids=["undefined", "defined"])
def test_deeply_nested_sequences_are_refused(tmp_path: Path, defined_length: bool) -> None:
    path = write_nested_sequences(tmp_path / "deep.dcm", 20_000, defined_length=defined_length)
    outcome: list[BaseException | str] = []

    def run() -> None:  # in a thread: a smaller C stack than the main thread's
        try:
            with open_instance(path) as instance:
                instance.dataset.to_json_dict()
            outcome.append("accepted")
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome[0], InvalidInstance), repr(outcome[0])
    assert "nest" in str(outcome[0]) and "\n" not in str(outcome[0])


def test_moderate_nesting_is_fine(tmp_path: Path) -> None:
    path = write_nested_sequences(tmp_path / "ok.dcm", 20)
    with open_instance(path) as instance:
        assert instance.number_of_frames == 0
        item = instance.dataset
        for _ in range(20):
            item = item.ContentSequence[0]


def test_undefined_length_sequence_that_never_ends(tmp_path: Path) -> None:
    path = write_nested_sequences(tmp_path / "deep.dcm", 3)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xfe\xff\x0d\xe0")])  # cut before the delimiters
    refused(path, "truncated|never ends")


def test_j2k_refuses_an_empty_frame(tmp_path: Path) -> None:
    made = write_encapsulated(
        tmp_path / "j.dcm", [b"\xff\x4f\xff\x51" + bytes(60), b""],
        transfer_syntax_uid=JPEG2000Lossless, rows=8, columns=8,
    )
    refused(made.path, "empty")


# -- found by the fuzzer (tests/test_fuzz_splitter.py) ------------------------------------


def test_unknown_vr_bytes_outside_ascii_are_read_as_pydicom_does(tmp_path: Path) -> None:
    """VR b"A\\x80" sorts between "AA" and "ZZ": pydicom reads a 2-byte length; no crash."""
    ds = image_header(rows=2, columns=2, bits=8)
    odd_vr = struct.pack("<HH2sH", 0x0009, 0x1000, b"A\x80", 2) + b"ab"
    pixels = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 4) + b"\x01\x02\x03\x04"
    path = write_raw_file(
        tmp_path / "odd.dcm", ds, ExplicitVRLittleEndian, encode_dataset(ds) + odd_vr + pixels
    )
    assert split(path) == [b"\x01\x02\x03\x04"]


def test_deflated_file_meta_that_pydicom_cannot_read_is_refused(tmp_path: Path) -> None:
    """An unknown VR in the file meta crashed the rewriting of the meta for inflation."""
    path = write_deflated(tmp_path / "d.dcm", image_header(rows=2, columns=2), 8, [bytes(8)])
    data = path.read_bytes()
    at = data.index(b"\x02\x00\x12\x00UI")  # Implementation Class UID
    path.write_bytes(data[:at] + b"\x02\x00\x12\x00TI" + data[at + 6 :])
    refused(path, "not a DICOM Part 10 file")


def test_junk_after_native_pixel_data_is_refused(tmp_path: Path) -> None:
    """pydicom reads such a file as an empty dataset; it was split as if whole."""
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=4, columns=4)
    with open(made.path, "ab") as fp:
        fp.write(b"\xfe\xff\x00\xe0\xff\xff\xff\xff")  # an item that never ends
    refused(made.path, "corrupt data after Pixel Data")
    assert pydicom.dcmread(made.path).keys() == set()  # pydicom reads nothing at all


def test_trailing_padding_after_pixel_data_is_fine(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=4, columns=4)
    with open(made.path, "ab") as fp:
        fp.write(struct.pack("<HH2s2xL", 0xFFFC, 0xFFFC, b"OB", 6) + bytes(6))
    assert split(made.path) == list(made.frames())


def _cpu_seconds(function) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def test_zeros_after_pixel_data_are_padding_and_cheap(tmp_path: Path) -> None:
    """1 MiB of NULs after Pixel Data read as 131,072 empty elements took seconds of CPU."""
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=2, rows=4, columns=4)
    with open(made.path, "ab") as fp:
        fp.write(bytes(MiB - 8))
    assert _cpu_seconds(lambda: split(made.path)) < 0.5
    assert split(made.path) == list(made.frames())


def test_a_header_of_too_many_elements_is_refused(tmp_path: Path) -> None:
    ds = image_header(rows=2, columns=2, bits=8)
    tiny = b"".join(
        struct.pack("<HH2sH", 0x0009, 0x1000 + n % 0xE000, b"LO", 0) for n in range(300_000)
    )
    pixels = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 4) + bytes(4)
    path = write_raw_file(
        tmp_path / "many.dcm", ds, ExplicitVRLittleEndian, encode_dataset(ds) + tiny + pixels
    )
    cpu = _cpu_seconds(lambda: refused(path, "too many elements"))
    assert cpu < 10, cpu


# -- issue #7: public pydicom API only ----------------------------------------------------

_SPLITTER_MODULES = ("splitter", "structure", "inflate", "native", "encapsulated", "geometry")


def test_the_splitter_uses_only_public_pydicom_names() -> None:
    """It imported pydicom's private _read_file_meta_info; a pydicom release may drop it."""
    from framecdn.ingest import splitter

    folder = Path(splitter.__file__).parent
    for module in _SPLITTER_MODULES:
        tree = ast.parse((folder / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pydicom"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (module, node.module, private)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                assert "pydicom" not in ast.unparse(node.value), (module, ast.unparse(node))


def test_codestream_markers_follow_pydicom_uid_groups() -> None:
    from pydicom import uid

    from framecdn.ingest.encapsulated import codestream_starts

    for syntax in uid.JPEGTransferSyntaxes + uid.JPEGLSTransferSyntaxes:
        assert codestream_starts(syntax) == (b"\xff\xd8",)
    for syntax in uid.JPEG2000TransferSyntaxes:  # HTJ2K included
        assert codestream_starts(syntax)[0] == b"\xff\x4f\xff\x51"
    assert codestream_starts(uid.RLELossless) is None


def test_a_transfer_syntax_uid_with_a_newline_is_refused_in_one_line(tmp_path: Path) -> None:
    made = write_tomosynthesis(tmp_path / "t.dcm", frames=1, rows=2, columns=2)
    data = made.path.read_bytes()
    at = data.index(b"1.2.840.10008.1.2.1\x00")
    made.path.write_bytes(data[:at] + b"1.\n.840.10008.1.2.1\x00" + data[at + 20 :])
    assert refused(made.path, "unsupported transfer syntax") == (
        "unsupported transfer syntax 1.\\n.840.10008.1.2.1"
    )
