"""The image geometry an instance declares, refused when no real image could have it.

Rows, Columns, samples and bits decide how many bytes a native frame holds, and a viewer
decodes a compressed frame by them, so each must be possible before any frame is split:
a zero makes empty frames, BitsAllocated 7 no pixel type, BitsStored above
BitsAllocated bits that are not there.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from framecdn.ingest.invalid import InvalidInstance

#: PS3.5 8.1.1 and PS3.3 C.7.6.3.1.1: 1-bit (segmentation), 8, 16, 32, 64 bits.
BITS_ALLOCATED = (1, 8, 16, 32, 64)
#: 1 (grey), 3 (colour), 4 (retired ARGB/CMYK, still found in old files).
SAMPLES_PER_PIXEL = (1, 3, 4)


@dataclass(frozen=True, slots=True)
class Geometry:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    photometric_interpretation: str

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame."""
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        if self.photometric_interpretation == "YBR_FULL_422":
            bits = bits // 3 * 2  # two luminance samples share one chroma pair
        return bits

    @property
    def frame_bytes(self) -> int:
        return -(-self.frame_bits // 8)

    def describe(self) -> str:
        return (
            f"{self.rows}x{self.columns}x{self.samples_per_pixel} "
            f"at {self.bits_allocated} bits"
        )


def read_geometry(dataset: Dataset) -> Geometry:
    """The declared geometry, or :class:`InvalidInstance` saying which attribute is wrong."""
    rows = _required_int(dataset, "Rows")
    columns = _required_int(dataset, "Columns")
    bits_allocated = _required_int(dataset, "BitsAllocated")
    samples = _optional_int(dataset, "SamplesPerPixel", 1)
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if not 1 <= value <= 0xFFFF:
            raise InvalidInstance(f"{keyword} is {value}")
    if bits_allocated not in BITS_ALLOCATED:
        raise InvalidInstance(f"BitsAllocated {bits_allocated} is not 1, 8, 16, 32 or 64")
    bits_stored = _optional_int(dataset, "BitsStored", bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise InvalidInstance(
            f"BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}"
        )
    if samples not in SAMPLES_PER_PIXEL:
        raise InvalidInstance(f"SamplesPerPixel {samples} is not 1, 3 or 4")
    photometric = _text(dataset, "PhotometricInterpretation")
    if not photometric:
        raise InvalidInstance("PhotometricInterpretation is missing")
    if photometric.startswith("YBR") and samples != 3:
        raise InvalidInstance(f"PhotometricInterpretation {photometric} needs 3 samples")
    return Geometry(rows, columns, samples, bits_allocated, photometric)


def read_number_of_frames(dataset: Dataset) -> int:
    """NumberOfFrames, 1 when absent (a single-frame image)."""
    frames = _optional_int(dataset, "NumberOfFrames", 1)
    if frames < 1:
        raise InvalidInstance(f"NumberOfFrames is {frames}")
    return frames


def _value(dataset: Dataset, keyword: str) -> object:
    try:
        return dataset.get(keyword)
    except Exception as exc:  # noqa: BLE001 — pydicom converting a corrupt raw value
        raise InvalidInstance(f"{keyword} is unreadable ({type(exc).__name__})") from None


def _optional_int(dataset: Dataset, keyword: str, default: int) -> int:
    value = _value(dataset, keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInstance(f"{keyword} {repr(value)[:40]} is not a number") from None


def _required_int(dataset: Dataset, keyword: str) -> int:
    if _value(dataset, keyword) in (None, ""):
        raise InvalidInstance(f"{keyword} is missing")
    return _optional_int(dataset, keyword, 0)


def _text(dataset: Dataset, keyword: str) -> str:
    value = _value(dataset, keyword)
    return str(value).strip() if value is not None else ""
