"""The streaming frame splitter: one DICOM file in, its frames' DICOMweb bytes out.

Usage::

    with open_instance(path) as instance:          # refuses a bad file: InvalidInstance
        instance.dataset                           # every element but Pixel Data
        instance.number_of_frames                  # 0 for a metadata-only instance
        for frame in instance.frames():            # bytes, one frame at a time
            ...
        for reader in instance.frame_readers():    # or: a FrameReader per frame, unread
            reader.number, reader.size             # 1-based number, exact size in bytes
            for chunk in reader.chunks(8 << 20):   # exactly 8 MiB each but the last
                ...                                # (e.g. the parts of a multipart upload)
        instance.frame_reader(3).read()            # any frame, whole

Memory stays at about one chunk (``frames()``: one frame) whatever the instance size:
frames are read by seeking, so a frame larger than the memory budget is handed out
in chunks without ever being held whole. Sources that cannot seek (an HTTP body) are
first copied to a temporary file on disk; deflated files are inflated into one, within
:class:`InflateLimits`.

Nothing is emitted before the whole file is checked: the element structure (every
length within the file, delimiters that come, nesting at most
:data:`~framecdn.ingest.structure.MAX_NESTING` deep; :mod:`~framecdn.ingest.structure`),
the declared geometry (:mod:`~framecdn.ingest.geometry`), and that the Pixel Data holds
exactly NumberOfFrames frames of it (:mod:`~framecdn.ingest.native`,
:mod:`~framecdn.ingest.encapsulated`). A file failing any check raises
:class:`InvalidInstance` with a one-line reason. A file without Pixel Data (SR, KO, RT
Plan, Presentation State) opens as a metadata-only instance with no frames. A
:class:`SplitInstance` reads from one file position: use it from one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID

from framecdn.framestore.keys import InvalidUID, validate_uid
from framecdn.framestore.part10 import Part10
from framecdn.framestore.transfer_syntax import UnsupportedTransferSyntax, stored_representation
from framecdn.ingest.encapsulated import FragmentFrames
from framecdn.ingest.geometry import read_geometry, read_number_of_frames
from framecdn.ingest.inflate import InflateLimits, InflatingFile
from framecdn.ingest.invalid import InvalidInstance
from framecdn.ingest.native import NativeFrames
from framecdn.ingest.remainder import build_part10
from framecdn.ingest.structure import (
    MAX_NESTING,
    UNDEFINED_LENGTH,
    DataEnd,
    ElementHeader,
    check_value_fits,
    walk_dataset,
)

__all__ = ["FrameReader", "InflateLimits", "InvalidInstance", "SplitInstance", "open_instance"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = {0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_PADDING = 0xFFFCFFFC  # Data Set Trailing Padding: nothing to keep
#: Elements after native Pixel Data are kept only if they fit in this many bytes...
_MAX_TRAILING = 1 << 20
#: ...and there may be no more of them than this (padding is one element).
_MAX_TRAILING_ELEMENTS = 1024
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Attributes of the Image Pixel module: with any of them, a missing Pixel Data is damage.
_IMAGE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "NumberOfFrames")


class _PixelFrames(Protocol):
    count: int

    def size(self, index: int) -> int: ...

    def file_ranges(self) -> list[tuple[int, int, int, int]] | None: ...

    def chunks(self, index: int, chunk_size: int) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class FrameReader:
    """One frame of an open instance, not read yet: its size, and its bytes on demand."""

    number: int  # 1-based, as in DICOMweb URLs
    size: int
    _chunks: Callable[[int], Iterator[bytes]] = field(repr=False)

    def chunks(self, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The frame's bytes in pieces of exactly ``chunk_size`` (the last may be shorter)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        return self._chunks(chunk_size)

    def read(self) -> bytes:
        """The whole frame: ``size`` bytes in memory at once."""
        return b"".join(self._chunks(self.size))


@dataclass
class SplitInstance:
    """An opened instance: its header, and its frames read lazily from disk."""

    dataset: Dataset
    source_transfer_syntax_uid: str
    #: The syntax of the stored frames (native ones become Explicit VR LE); for a
    #: metadata-only instance, the source's.
    transfer_syntax_uid: str
    #: The frames' single-part media type; empty for a metadata-only instance.
    media_type: str
    number_of_frames: int
    _pixels: _PixelFrames | None = field(default=None, repr=False)
    _fp: BinaryIO | None = field(default=None, repr=False)

    def part10(self) -> Part10 | None:
        """What rebuilds the source file byte for byte with the frame objects (#20 item 2).

        ``None`` (said in the log) for a deflated source (its frames are stored
        inflated: retrieval builds a file in the stored syntax), native frames that are
        not the file's bytes (big endian, 1-bit off byte boundaries), or more literal
        bytes than :data:`~framecdn.framestore.part10.MAX_LITERAL_BYTES`. Reads the
        file: call it between frame reads, from the same thread.
        """
        if self._fp is None or UID(self.source_transfer_syntax_uid).is_deflated:
            log.info("no byte-exact copy kept: deflated source (frames are stored inflated)")
            return None
        ranges = self._pixels.file_ranges() if self._pixels is not None else []
        if ranges is None:
            log.info("no byte-exact copy kept: stored frames are not the file's bytes")
            return None
        return build_part10(self._fp, ranges, self.number_of_frames)

    @property
    def metadata_only(self) -> bool:
        """True for an instance without Pixel Data (SR, KO, RT Plan, ...)."""
        return self.number_of_frames == 0

    def frame_reader(self, number: int) -> FrameReader:
        """The reader of 1-based frame ``number``."""
        if self._pixels is None or not 1 <= number <= self.number_of_frames:
            raise IndexError(f"frame {number} is outside 1..{self.number_of_frames}")
        index = number - 1
        pixels = self._pixels
        return FrameReader(
            number, pixels.size(index), lambda chunk_size: pixels.chunks(index, chunk_size)
        )

    def frame_readers(self) -> Iterator[FrameReader]:
        """A reader per frame, in order, ``number_of_frames`` of them."""
        for number in range(1, self.number_of_frames + 1):
            yield self.frame_reader(number)

    def frames(self) -> Iterator[bytes]:
        """Each frame's exact DICOMweb bytes, in order, each read whole."""
        for reader in self.frame_readers():
            yield reader.read()


@contextlib.contextmanager
def open_instance(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    spool_dir: str | None = None,
    limits: InflateLimits | None = None,
) -> Iterator[SplitInstance]:
    """Open and check a DICOM Part 10 file for splitting; temporary files go on exit.

    ``source`` is a path (of a regular file: a FIFO or device is refused, not waited
    on) or a binary file object; an object that cannot seek (or is not at its start)
    is spooled to a temporary file in ``spool_dir`` first. ``limits`` bound the
    inflation of a deflated file.
    """
    with contextlib.ExitStack() as stack:
        fp = _seekable(source, stack, spool_dir)
        meta, dataset_start = _read_file_meta(fp)
        syntax = _transfer_syntax(meta)
        fp, dataset_start, pixel_data = _check_structure(
            fp, meta, syntax, dataset_start, stack, spool_dir, limits or InflateLimits()
        )
        dataset = _read_dataset(fp, syntax, dataset_start, pixel_data)
        dataset.file_meta = meta
        _check_nesting(dataset)
        _check_uids(dataset)
        yield _split_instance(fp, dataset, syntax, pixel_data)


def _split_instance(
    fp: BinaryIO, dataset: Dataset, syntax: UID, pixel_data: ElementHeader | None
) -> SplitInstance:
    if pixel_data is None:
        present = [keyword for keyword in _IMAGE_ATTRIBUTES if keyword in dataset]
        if present or "Image Storage" in _sop_class_name(dataset):
            because = f"{present[0]} is present" if present else "it is an image"
            raise InvalidInstance(
                f"no Pixel Data element, though {because} (is the file truncated?)"
            )
        return SplitInstance(dataset, str(syntax), str(syntax), "", 0, _fp=fp)
    stored_syntax, media_type = _stored_representation(syntax)
    geometry = read_geometry(dataset)
    number_of_frames = read_number_of_frames(dataset)
    pixels: _PixelFrames
    if syntax.is_encapsulated:
        pixels = FragmentFrames(fp, dataset, pixel_data, geometry, syntax, number_of_frames)
    else:
        pixels = NativeFrames(fp, pixel_data, geometry, syntax, number_of_frames)
        _read_trailing_elements(fp, dataset, syntax, pixel_data)
    return SplitInstance(
        dataset, str(syntax), stored_syntax, media_type, number_of_frames, pixels, fp
    )


def _sop_class_name(dataset: Dataset) -> str:
    try:
        return UID(str(dataset.get("SOPClassUID", ""))).name
    except Exception:  # noqa: BLE001 — unreadable: no name
        return ""


# -- opening ---------------------------------------------------------------------------


def _seekable(
    source: str | os.PathLike[str] | BinaryIO, stack: contextlib.ExitStack, spool_dir: str | None
) -> BinaryIO:
    """A seekable binary file positioned at the start of the DICOM stream."""
    if isinstance(source, (str, os.PathLike)):
        return stack.enter_context(_open_regular_file(source))
    try:
        if source.seekable() and source.tell() == 0:
            return source
    except (AttributeError, OSError):
        pass
    spool = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir))  # noqa: SIM115
    shutil.copyfileobj(source, spool, _CHUNK)
    spool.seek(0)
    return spool


def _open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open for reading without ever blocking: a FIFO would wait for a writer forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket
            raise InvalidInstance("not a regular file (a socket)") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidInstance(f"not a regular file ({_file_kind(mode)})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def _read_file_meta(fp: BinaryIO) -> tuple[FileMetaDataset, int]:
    """The File Meta Information and the offset of the dataset after it.

    pydicom's public ``read_dataset`` reads group 2 after the structure walk has
    found where it ends, so every later offset is exact.
    """
    try:
        read_preamble(fp, False)
    except InvalidDicomError:
        raise InvalidInstance(
            "not a DICOM Part 10 file (no 'DICM' prefix after the preamble)"
        ) from None
    start = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    try:
        first = walk_dataset(
            fp, start, implicit=False, little=True,
            end=DataEnd(size, f"the end of the file ({size} bytes)"), stop=_not_file_meta,
        )
    except InvalidInstance as exc:
        raise InvalidInstance(f"not a DICOM Part 10 file (file meta: {exc})") from None
    dataset_start = first.offset if first is not None else size
    fp.seek(start)
    try:
        meta = FileMetaDataset(read_dataset(fp, False, True, stop_when=_stop_at_dataset))
        for _ in meta:  # convert every element now: a file meta pydicom cannot read is damage
            pass
    except Exception as exc:  # noqa: BLE001 — pydicom on untrusted bytes
        raise InvalidInstance(f"not a DICOM Part 10 file ({_first_line(exc)})") from None
    if fp.tell() != dataset_start:
        raise InvalidInstance("not a DICOM Part 10 file (file meta group ends ambiguously)")
    return meta, dataset_start


def _not_file_meta(tag: int) -> bool:
    return tag >> 16 != 2


def _stop_at_dataset(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _transfer_syntax(meta: FileMetaDataset) -> UID:
    try:
        value = meta.get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 — unreadable is as good as missing
        value = None
    if not value:
        raise InvalidInstance("not a DICOM Part 10 file (no Transfer Syntax UID in the file meta)")
    syntax = UID(str(value).strip("\x00 "))
    if not syntax.is_transfer_syntax:
        raise InvalidInstance(f"unsupported transfer syntax {syntax[:64]}")
    return syntax


def _stored_representation(syntax: UID) -> tuple[str, str]:
    try:
        return stored_representation(str(syntax))
    except UnsupportedTransferSyntax:
        if syntax in pydicom.uid.MPEGTransferSyntaxes or "HEVC" in syntax.name:
            raise InvalidInstance(
                f"video transfer syntax {syntax.name} ({syntax}) has no per-frame representation"
            ) from None
        raise InvalidInstance(f"unsupported transfer syntax {syntax.name} ({syntax})") from None


# -- the header ------------------------------------------------------------------------


def _check_structure(
    fp: BinaryIO,
    meta: FileMetaDataset,
    syntax: UID,
    dataset_start: int,
    stack: contextlib.ExitStack,
    spool_dir: str | None,
    limits: InflateLimits,
) -> tuple[BinaryIO, int, ElementHeader | None]:
    """Walk the dataset's structure up to Pixel Data; return the file to split from.

    A deflated dataset is inflated into a temporary file while it is walked, so an
    impossible element stops the inflation; the rest is inflated after.
    """
    if not syntax.is_deflated:
        size = fp.seek(0, os.SEEK_END)
        end = DataEnd(size, f"the end of the file ({size} bytes)")
        pixel_data = _walk_to_pixel_data(fp, dataset_start, syntax, end)
        return fp, dataset_start, pixel_data
    # The spool holds the inflated dataset alone: its file meta is the source's.
    spool = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir))  # noqa: SIM115
    inflated_start = 0
    deflated_size = fp.seek(0, os.SEEK_END) - dataset_start
    fp.seek(dataset_start)
    inflating = InflatingFile(fp, spool, deflated_size=deflated_size, limits=limits)
    end = DataEnd(
        inflating.most,
        f"the most the deflated dataset may inflate to ({inflating.most - inflated_start} "
        "bytes: FRAMECDN_INGEST_MAX_INFLATE_RATIO, FRAMECDN_INGEST_MAX_INFLATED_MB)",
        "a deflate bomb, or a corrupt file",
    )
    pixel_data = _walk_to_pixel_data(inflating, inflated_start, syntax, end)
    return inflating.finish(), inflated_start, pixel_data


def _walk_to_pixel_data(
    fp: BinaryIO | InflatingFile, start: int, syntax: UID, end: DataEnd
) -> ElementHeader | None:
    pixel_data = walk_dataset(
        fp, start, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian,
        end=end, stop=_is_pixel_data,
    )
    if pixel_data is None:
        return None
    if pixel_data.tag in _FLOAT_PIXEL_DATA:
        raise InvalidInstance(f"{_FLOAT_PIXEL_DATA[pixel_data.tag]} is not supported")
    check_value_fits(pixel_data, end)
    return pixel_data


def _is_pixel_data(tag: int) -> bool:
    return tag == _PIXEL_DATA or tag in _FLOAT_PIXEL_DATA


def _read_dataset(
    fp: BinaryIO, syntax: UID, start: int, pixel_data: ElementHeader | None
) -> Dataset:
    """Every element before Pixel Data, read by pydicom from the checked structure."""
    fp.seek(start)
    try:
        dataset = read_dataset(
            fp, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_at_pixel_data
        )
    except Exception as exc:  # noqa: BLE001 — pydicom on untrusted bytes
        raise InvalidInstance(f"cannot read the DICOM header ({_first_line(exc)})") from None
    end = pixel_data.offset if pixel_data is not None else fp.seek(0, os.SEEK_END)
    if fp.tell() != end:
        raise InvalidInstance(
            f"cannot read the DICOM header consistently (pydicom stopped at byte {fp.tell()}, "
            f"the elements end at byte {end})"
        )
    return dataset


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return _is_pixel_data(tag)


def _read_trailing_elements(
    fp: BinaryIO, dataset: Dataset, syntax: UID, pixel_data: ElementHeader
) -> None:
    """Check what follows native Pixel Data, and keep its elements if they are few.

    Only zeros (padding) or a few elements (e.g. Data Set Trailing Padding) may follow;
    anything else is damage, which pydicom would read as an empty dataset.
    """
    if pixel_data.length == UNDEFINED_LENGTH:
        return
    start = pixel_data.value_offset + pixel_data.length
    size = fp.seek(0, os.SEEK_END)
    if size <= start or _all_zeros(fp, start, size):
        return
    try:
        walk_dataset(
            fp, start, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian,
            end=DataEnd(size, f"the end of the file ({size} bytes)"), stop=lambda tag: False,
            max_elements=_MAX_TRAILING_ELEMENTS,
        )
    except InvalidInstance as exc:
        raise InvalidInstance(f"corrupt data after Pixel Data: {exc}") from None
    if size - start > _MAX_TRAILING:
        log.warning("ignoring %d bytes of elements after Pixel Data", size - start)
        return
    try:
        fp.seek(start)
        trailing = read_dataset(
            fp, syntax.is_implicit_VR, syntax.is_little_endian, bytelength=size - start
        )
        kept = [element for element in trailing if _PIXEL_DATA < element.tag != _PADDING]
    except Exception as exc:  # noqa: BLE001 — pixels are fine; a broken tail only loses itself
        log.warning("ignoring unreadable elements after Pixel Data: %s", _first_line(exc))
        return
    for element in kept:
        dataset[element.tag] = element


def _all_zeros(fp: BinaryIO, start: int, end: int) -> bool:
    fp.seek(start)
    while start < end:
        chunk = fp.read(min(_CHUNK, end - start))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        start += len(chunk)
    return True


def _check_nesting(dataset: Dataset) -> None:
    """Parse every sequence now, one level at a time, and refuse what nests too deep.

    The structure walk checks the sequences it can recognise; pydicom parses a private
    sequence only when it is read, by recursion, which is bounded here instead of in
    the metadata encoder.
    """
    pending = [(dataset, 0)]
    while pending:
        item, depth = pending.pop()
        for tag in list(item.keys()):
            try:
                element = item[tag]
            except RecursionError:
                raise InvalidInstance(_too_deep()) from None
            except Exception:  # noqa: BLE001, S112 — a value pydicom cannot convert is not kept
                continue
            if element.VR == "SQ" and element.value:
                if depth >= MAX_NESTING:
                    raise InvalidInstance(_too_deep())
                pending.extend((nested, depth + 1) for nested in element.value)


def _too_deep() -> str:
    return f"sequences nested deeper than {MAX_NESTING} levels"


def _check_uids(dataset: Dataset) -> None:
    for keyword in _REQUIRED_UIDS:
        try:
            value = dataset.get(keyword)
            validate_uid(str(value) if value else "", what=keyword)
        except InvalidUID as exc:
            raise InvalidInstance(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 — pydicom converting a corrupt value
            raise InvalidInstance(f"{keyword} is unreadable ({type(exc).__name__})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
