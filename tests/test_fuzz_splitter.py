"""Fuzzing the splitter: a damaged file is split exactly as pydicom reads it, or refused.

A small corpus covers every transfer syntax family (native little/big endian and
implicit, deflated, 1-bit, JPEG baseline with and without offset tables, JPEG-LS,
JPEG 2000 with an Extended Offset Table, HTJ2K, RLE, documents without Pixel Data).
Each file is truncated at every offset, and hypothesis (derandomized: the same examples
on every run) flips bytes, rewrites lengths, geometry and delimiters, nests sequences
and builds deflate bombs. Every outcome must be one of two:

- accepted, and the frames equal what an independent reader finds: pydicom's own
  parse of the same bytes (``generate_frames`` for encapsulated data, slicing of its
  Pixel Data for native), and the metadata encodes as ingest encodes it;
- refused with :class:`InvalidInstance`, whose message is one line.

Never another exception, more than a few seconds of CPU (an interval timer), or more
than a bounded amount of memory (tracemalloc). A subset is ingested into the real store
to check that a refused file leaves nothing in the bucket.

``FRAMECDN_FUZZ_EXAMPLES`` sets the examples per property (default 200, under a minute
for the whole file on 2 cores); a long run is described in docs/fuzzing.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import signal
import struct
import tempfile
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import (
    encapsulate,
    encapsulate_extended,
    generate_fragments,
    generate_frames,
    parse_basic_offsets,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.ingest import metadata
from framecdn.ingest.pipeline import ingest_paths
from framecdn.ingest.splitter import InflateLimits, InvalidInstance, open_instance
from framecdn.ingest.structure import MAX_NESTING
from tests.conftest import list_keys
from tests.dicom_files import (
    encode_dataset,
    image_header,
    metadata_only_dataset,
    write_raw_file,
    zeros,
)

pytestmark = pytest.mark.filterwarnings("ignore")

EXAMPLES = int(os.environ.get("FRAMECDN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,  # the CPU timer below bounds each example; wall time is noisy on 2 cores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MiB = 1 << 20
#: Smaller than the defaults, so bombs are cheap to build and to refuse.
LIMITS = InflateLimits(max_ratio=50, max_bytes=24 * MiB, ratio_allowance=4 * MiB)
CPU_SECONDS = 10
MEMORY = 32 * MiB
UNDEFINED = 0xFFFFFFFF


# -- the corpus -------------------------------------------------------------------------


def _codestream(name: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _save(ds: Dataset, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _image(syntax: str, pixel_data: bytes, *, frames: int, rows: int, columns: int,
           bits: int = 8, samples: int = 1, photometric: str = "MONOCHROME2") -> bytes:
    ds = image_header(rows=rows, columns=columns, bits=bits, frames=frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB" if bits <= 8 or UID(syntax).is_encapsulated else "OW"
    return _save(ds, syntax)


def _one_bit(frames: int, rows: int, columns: int) -> bytes:
    bits = np.random.default_rng(3).integers(0, 2, frames * rows * columns, dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds = image_header(rows=rows, columns=columns, bits=8, frames=frames)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = packed + b"\x00" * (len(packed) % 2)
    ds["PixelData"].VR = "OB"
    return _save(ds, ExplicitVRLittleEndian)


def _long_elements() -> bytes:
    """A native image whose header has long-VR values: a sequence, OB, UT, an ICC profile."""
    ds = image_header(rows=2, columns=2, frames=1)
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.ReferencedImageSequence = [item, item]
    ds.add_new(0x00090010, "LO", "FRAMECDN FUZZ")
    ds.add_new(0x00091001, "OB", bytes(range(96)))
    ds.add_new(0x00091002, "UT", "free text " * 5)
    ds.ICCProfile = bytes(64)
    ds.PixelData = bytes(range(8))
    return _save(ds, ExplicitVRLittleEndian)


def _build_corpus() -> dict[str, bytes]:
    noise = np.random.default_rng(1).bytes(64)
    jpeg = _codestream("SC_rgb_small_odd_jpeg.dcm")
    jpeg_ls = _codestream("JPEGLSNearLossless_08.dcm")
    j2k = _codestream("JPEG2000.dcm")
    rle = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    rle.compress(RLELossless)
    rle_frame = next(generate_frames(rle.PixelData, number_of_frames=1))
    eot_data, eot, eot_lengths = encapsulate_extended([j2k, j2k])
    j2k_eot = image_header(rows=1024, columns=256, bits=16, frames=2)
    j2k_eot.PixelData, j2k_eot.ExtendedOffsetTable = eot_data, eot
    j2k_eot.ExtendedOffsetTableLengths = eot_lengths
    j2k_eot["PixelData"].VR = "OB"
    sr = metadata_only_dataset("sr")
    return {
        "native-le": _image(
            ExplicitVRLittleEndian, noise[:36], frames=2, rows=3, columns=3, bits=16
        ),
        "native-be": _image(ExplicitVRBigEndian, noise[:36], frames=2, rows=3, columns=3, bits=16),
        "native-implicit": _image(ImplicitVRLittleEndian, noise[:18], frames=2, rows=3, columns=3),
        "native-rgb-odd": Path(get_testdata_file("SC_rgb_small_odd.dcm")).read_bytes(),
        "native-long-elements": _long_elements(),
        "native-1bit": _one_bit(3, 5, 3),
        "deflated": _image(DeflatedExplicitVRLittleEndian, noise[:48], frames=3, rows=4, columns=4),
        "jpeg-bot": _image(
            JPEGBaseline8Bit, encapsulate([jpeg, jpeg]), frames=2, rows=3, columns=3,
            samples=3, photometric="YBR_FULL",
        ),
        "jpeg-fragments": _image(
            JPEGBaseline8Bit, encapsulate([jpeg, jpeg], fragments_per_frame=3, has_bot=False),
            frames=2, rows=3, columns=3, samples=3, photometric="YBR_FULL",
        ),
        "jpeg-ls": _image(
            JPEGLSNearLossless, encapsulate([jpeg_ls, jpeg_ls], has_bot=False), frames=2,
            rows=45, columns=10,
        ),
        "j2k-eot": _save(j2k_eot, JPEG2000Lossless),
        "htj2k": _image(
            HTJ2KLossless, encapsulate([j2k]), frames=1, rows=1024, columns=256, bits=16
        ),
        "rle": _image(
            RLELossless, encapsulate([rle_frame, rle_frame]), frames=2, rows=3, columns=3,
            samples=3, photometric="RGB",
        ),
        "sr": _save(sr, ExplicitVRLittleEndian),
        "rtplan-implicit": Path(get_testdata_file("rtplan.dcm")).read_bytes(),
    }


CORPUS = _build_corpus()
IMAGES = sorted(name for name in CORPUS if name not in ("sr", "rtplan-implicit"))


# -- the independent reader -------------------------------------------------------------


def reference_frames(data: bytes) -> list[bytes]:
    """The frames pydicom finds in ``data``: its parse of Pixel Data, sliced or de-fragmented."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        return []
    count = int(ds.get("NumberOfFrames") or 1)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        return _encapsulated_reference(ds, count)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.BitsAllocated)
    data = ds.PixelData
    if bits == 1:
        total = rows * columns * samples
        unpacked = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        frames = unpacked[: total * count].reshape(count, total)
        return [np.packbits(frame, bitorder="little").tobytes() for frame in frames]
    if not syntax.is_little_endian and (bits > 8 or ds["PixelData"].VR == "OW"):
        word = max(bits // 8, 2)
        whole = len(data) // word * word
        data = np.frombuffer(data[:whole], f">u{word}").astype(f"<u{word}").tobytes()
    size = rows * columns * samples * bits // 8
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        size = size // 3 * 2
    return [data[i * size : (i + 1) * size] for i in range(count)]


def _encapsulated_reference(ds: Dataset, count: int) -> list[bytes]:
    """pydicom's frames; with an offset table set aside if it contradicts the items.

    The splitter ignores (and logs) a table whose offsets are not increasing item starts
    or whose lengths are not the fragments', so the reference for such a file is
    pydicom's reading without it: pydicom trusts a table unchecked.
    """
    fragments = list(generate_fragments(ds.PixelData))[1:]  # the first item is the table
    starts = np.cumsum([0] + [8 + len(fragment) for fragment in fragments])[:-1].tolist()
    extended = _consistent_extended_offsets(ds, count, fragments, starts)
    if extended is not None:
        return list(
            generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=extended)
        )
    basic = parse_basic_offsets(ds.PixelData)
    increasing = all(a < b for a, b in itertools.pairwise(basic))
    if basic and basic[0] == 0 and increasing and set(basic) <= set(starts):
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    if count == 1 or len(fragments) == count:
        (bot_length,) = struct.unpack("<L", ds.PixelData[4:8])
        without_table = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + ds.PixelData[8 + bot_length :]
        return list(generate_frames(without_table, number_of_frames=count))
    # Several fragments a frame and no table: pydicom looks for each frame's EOI, and
    # misses one that is damaged or split over two fragments (DESIGN.md). The standard
    # says where a frame starts instead: at a fragment opening a codestream (SOI / SOC).
    starts_codestream = [fragment[:2] in (b"\xff\xd8", b"\xff\x4f") for fragment in fragments]
    frames: list[bytes] = []
    for fragment, opens in zip(fragments, starts_codestream, strict=True):
        if opens or not frames:
            frames.append(fragment)
        else:
            frames[-1] += fragment
    return frames


def _consistent_extended_offsets(
    ds: Dataset, count: int, fragments: list[bytes], starts: list[int]
) -> tuple[bytes, bytes] | None:
    table, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    if not table or not lengths or len(table) != 8 * count or len(lengths) != 8 * count:
        return None
    offsets = struct.unpack(f"<{count}Q", table)
    sizes = struct.unpack(f"<{count}Q", lengths)
    if len(fragments) != count or list(offsets) != starts:
        return None
    if list(sizes) != [len(fragment) for fragment in fragments]:
        return None
    return table, lengths


# -- the two outcomes -------------------------------------------------------------------


class Hang(Exception):
    """More CPU than any file of this size may take."""


@contextlib.contextmanager
def bounded(cpu_seconds: float = CPU_SECONDS, memory: int | None = MEMORY) -> Iterator[None]:
    """Fail if the block uses more CPU time or (unless ``None``) traced memory than allowed."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"more than {cpu_seconds} s of CPU")

    previous = signal.signal(signal.SIGVTALRM, expire)
    signal.setitimer(signal.ITIMER_VIRTUAL, cpu_seconds)
    if memory is not None:
        tracemalloc.start()
    peak = 0
    try:
        yield
    finally:
        if memory is not None:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
        # Also when the file was refused: a refusal after a huge allocation is a failure.
        if memory is not None and peak >= memory:
            raise AssertionError(f"peak traced memory {peak} bytes")


#: Examples are split from a real file: reads of a file object allocate what is asked.
_SCRATCH = tempfile.TemporaryDirectory(prefix="framecdn-fuzz-")
_EXAMPLE = Path(_SCRATCH.name) / "example.dcm"


def split_or_refuse(data: bytes, *, memory: int | None = MEMORY) -> str:
    """Assert one of the two outcomes for ``data``; return "accepted" or "refused"."""
    _EXAMPLE.write_bytes(data)
    try:
        with bounded(memory=memory), open_instance(_EXAMPLE, limits=LIMITS) as instance:
            frames = list(instance.frames())
            sizes = [reader.size for reader in instance.frame_readers()]
            key = InstanceKey(
                str(instance.dataset.StudyInstanceUID),
                str(instance.dataset.SeriesInstanceUID),
                str(instance.dataset.SOPInstanceUID),
            )
            metadata.encode(
                metadata.instance_json(
                    instance.dataset, key=key, transfer_syntax_uid=instance.transfer_syntax_uid,
                    number_of_frames=instance.number_of_frames,
                )
            )
    except InvalidInstance as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) < 400, repr(reason)
        return "refused"
    assert sizes == [len(frame) for frame in frames]
    assert frames == reference_frames(data)
    return "accepted"


# -- the corpus as it is, and truncated --------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_is_split_exactly(name: str) -> None:
    assert split_or_refuse(CORPUS[name]) == "accepted"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_truncated_at_every_offset(name: str) -> None:
    data = CORPUS[name]
    # Lengths are the file's own: memory cannot grow past it, and tracing it costs 5x.
    outcomes = {split_or_refuse(data[:size], memory=None) for size in range(len(data))}
    assert "refused" in outcomes


# -- mutations --------------------------------------------------------------------------

_VRS = {vr.value.encode() for vr in VR if len(vr.value) == 2}
_LONG = {vr.value.encode() for vr in EXPLICIT_VR_LENGTH_32}
_DELIMITERS = {0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD}


def length_fields(data: bytes) -> list[tuple[int, int, int]]:
    """(header offset, length offset, length size) of every element, item and delimiter
    header that looks like one, in either byte order."""
    fields = []
    for position in range(128, len(data) - 8):
        for endian in "<>":
            group, element = struct.unpack_from(f"{endian}HH", data, position)
            tag = group << 16 | element
            vr = data[position + 4 : position + 6]
            if tag in _DELIMITERS:
                fields.append((position, position + 4, 4))
            elif tag in DicomDictionary or (group & 1 and group > 8):
                if vr in _LONG:
                    fields.append((position, position + 8, 4))
                elif vr in _VRS:
                    fields.append((position, position + 6, 2))
                elif endian == "<":
                    fields.append((position, position + 4, 4))  # implicit VR
    return sorted(set(fields))


FIELDS = {name: length_fields(data) for name, data in CORPUS.items()}
corpus_names = st.sampled_from(sorted(CORPUS))


@FUZZ
@given(corpus_names, st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                              min_size=1, max_size=4))
def test_flipped_bytes(name: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(CORPUS[name])
    for where, mask in flips:
        data[128 + int(where * (len(data) - 128))] ^= mask
    split_or_refuse(bytes(data))


@FUZZ
@given(corpus_names, st.data())
def test_rewritten_lengths(name: str, data: st.DataObject) -> None:
    raw = bytearray(CORPUS[name])
    _, offset, size = data.draw(st.sampled_from(FIELDS[name]), label="field")
    endian = data.draw(st.sampled_from("<>"), label="endian")
    fmt = f"{endian}{'H' if size == 2 else 'L'}"
    (old,) = struct.unpack_from(fmt, raw, offset)
    top = (1 << (8 * size)) - 1
    new = data.draw(
        st.sampled_from([0, top, top - 1, top // 2, old + 1, old + 2, old + 8, len(raw)])
        | st.integers(0, top)
        | st.integers(max(0, old - 16), min(top, old + 16)),
        label="length",
    )
    struct.pack_into(fmt, raw, offset, min(new, top))
    split_or_refuse(bytes(raw))


_GEOMETRY = {
    "Rows": st.integers(0, 0xFFFF),
    "Columns": st.integers(0, 0xFFFF),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 24, 32, 64, 0xFFFF]),
    "BitsStored": st.integers(0, 70).map(lambda bits: min(bits, 0xFFFF)),
    "SamplesPerPixel": st.integers(0, 6),
    "NumberOfFrames": st.integers(-3, 10).map(str) | st.sampled_from(["", "x", "2147483648"]),
    "PhotometricInterpretation": st.sampled_from(["", "RGB", "YBR_FULL_422", "PALETTE COLOR"]),
    "PlanarConfiguration": st.integers(0, 2),
    "PixelRepresentation": st.integers(0, 1),
}


@FUZZ
@given(st.sampled_from(IMAGES), st.sampled_from(sorted(_GEOMETRY)), st.data())
def test_wrong_geometry(name: str, keyword: str, data: st.DataObject) -> None:
    ds = pydicom.dcmread(io.BytesIO(CORPUS[name]))
    value = data.draw(_GEOMETRY[keyword], label=keyword)
    if keyword == "NumberOfFrames":  # written as LO: an IS could not hold "x"
        ds.add_new(0x00280008, "LO", value)
    else:
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    split_or_refuse(buffer.getvalue())


@FUZZ
@given(corpus_names, st.floats(0, 1), st.sampled_from(["sequence", "item", "un", "ob"]),
       st.integers(0, 64))
def test_undefined_lengths_that_never_end(name: str, where: float, kind: str, tail: int) -> None:
    """An undefined-length value inserted before an element, its delimiter never written."""
    data = CORPUS[name]
    fields = FIELDS[name]
    offset = fields[int(where * (len(fields) - 1))][0]
    opening = {
        "sequence": struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF),
        "item": struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF),
        "un": struct.pack("<HH2s2xL", 0x0009, 0x1010, b"UN", 0xFFFFFFFF),
        "ob": struct.pack("<HH2s2xL", 0x0009, 0x1010, b"OB", 0xFFFFFFFF),
    }[kind]
    split_or_refuse(data[:offset] + opening + data[offset : offset + tail])


def _nested(depth: int, style: str) -> bytes:
    """A document whose last element nests ``depth`` sequences, each one item deep."""
    ds = metadata_only_dataset("sr")
    del ds.ContentSequence
    implicit = style == "implicit-private"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
    if style == "undefined":
        level = struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", UNDEFINED) + item
    elif style == "un":
        level = struct.pack("<HH2s2xL", 0x0040, 0xA730, b"UN", UNDEFINED) + item
    else:  # implicit VR, a private tag no dictionary knows: a sequence because an item follows
        level = struct.pack("<HHLHHL", 0x0009, 0x1010, UNDEFINED, 0xFFFE, 0xE000, UNDEFINED)
    closing = struct.pack("<HHLHHL", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    body = encode_dataset(ds, implicit=implicit) + level * depth + closing * depth
    out = io.BytesIO()
    write_raw_file(out, ds, syntax, body)
    return out.getvalue()


@FUZZ
@given(st.integers(0, 3000), st.sampled_from(["undefined", "un", "implicit-private"]))
def test_nesting(depth: int, style: str) -> None:
    outcome = split_or_refuse(_nested(depth, style))
    assert outcome == ("accepted" if depth <= MAX_NESTING else "refused")


@settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
@given(st.integers(0, 40 * MiB), st.integers(0, 40 * MiB), st.booleans())
def test_deflate_bombs(pixels: int, trailing: int, honest: bool) -> None:
    """Zeros as Pixel Data and after it; the declared length honest or not."""
    columns = 1024
    rows = max(1, pixels // (2 * columns))
    length = rows * columns * 2
    ds = image_header(rows=rows, columns=columns)
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    declared = length if honest else length // 2
    header = encode_dataset(ds) + struct.pack("<HH2s2xL", 0x7FE0, 0x10, b"OW", declared)
    body = [deflater.compress(header)]
    body += [deflater.compress(chunk) for chunk in zeros(length + trailing)]
    body.append(deflater.flush())
    out = io.BytesIO()
    write_raw_file(out, ds, DeflatedExplicitVRLittleEndian, body)
    try:
        source = io.BytesIO(out.getvalue())
        with bounded(memory=8 * MiB), open_instance(source, limits=LIMITS) as instance:
            digests = []
            for reader in instance.frame_readers():
                digest = hashlib.sha256()
                for chunk in reader.chunks(MiB):
                    digest.update(chunk)
                digests.append(digest.hexdigest())
    except InvalidInstance:
        return  # one line by construction (tested in test_splitter_faults)
    assert honest  # half the declared length cannot hold the frame
    assert digests == [hashlib.sha256(bytes(length)).hexdigest()]


# -- nothing half-visible: a subset through ingest into the real store ------------------


def _ingest_cases() -> dict[str, bytes]:
    cases = {f"{name}.dcm": data for name, data in CORPUS.items()}
    for name, data in CORPUS.items():
        for fraction in (0.5, 0.9, 0.995):
            cases[f"{name}-cut{fraction}.dcm"] = data[: int(len(data) * fraction)]
        raw = bytearray(data)
        _, offset, size = FIELDS[name][-1]
        raw[offset : offset + size] = b"\xff" * size
        cases[f"{name}-length.dcm"] = bytes(raw)
    return cases


def test_refused_files_leave_nothing_in_the_bucket(s3_client, settings, tmp_path: Path) -> None:
    folder = tmp_path / "fuzzed"
    folder.mkdir()
    cases = _ingest_cases()
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    report = ingest_paths([folder], settings.with_overrides(ingest_workers=2), progress=False)
    committed = {}
    for result in report.results:
        expected = split_or_refuse(cases[Path(result.source).name])
        if result.status == "failed":
            assert expected == "refused", (result.source, result.reason)
            assert "\n" not in result.reason and not result.reason.startswith("unexpected")
        else:
            assert expected == "accepted", result.source
            committed[result.index.key] = result.index  # type: ignore[union-attr]
    assert committed and any(result.status == "failed" for result in report.results)
    layout = KeyLayout(settings.prefix)
    expected_keys = set()
    for key, index in committed.items():
        expected_keys |= {layout.index(key), layout.metadata_of(index)}
        if index.part10 is not None:
            expected_keys.add(layout.part10_of(index))
        expected_keys |= {layout.frame_of(index, n) for n in range(1, index.number_of_frames + 1)}
    assert set(list_keys(s3_client, settings.bucket, layout.prefix)) == expected_keys
