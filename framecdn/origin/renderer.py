"""Rendering one stored frame into a JPEG or PNG: decode, rescale, window, crop, scale, encode.

This is the CPU-heavy part of rendered and thumbnail answers. It runs in a worker
process (:mod:`framecdn.origin.rendered` owns the pool), never on the event loop: its
input is a picklable :class:`RenderJob` (the frame's stored bytes, the instance's DICOM
JSON, the rendition) and its output the encoded image. It needs the ``render`` extra
(numpy, Pillow, pydicom's pixel plug-ins): ``pip install 'framecdn[render]'``.

The pipeline (PS3.4 N.2, grayscale): stored values -> Modality LUT (Rescale Slope and
Intercept) -> VOI window -> 8 bits, inverted for MONOCHROME1. The window is the
request's ``window`` parameter, else the frame's own (per-frame functional group, then
shared, then the top-level WindowCenter/WindowWidth/VOILUTFunction; the first of
several), else the frame's value range (``linear-exact`` from its minimum to its
maximum). Output values are rounded to the nearest integer, ties to even. Colour
images are converted to RGB (YBR by pydicom's decoders, PALETTE COLOR through its LUT)
and scaled to 8 bits. Then the viewport's source region is cut (a negative width or
height flips it) and scaled to fit ``vw`` x ``vh`` keeping its aspect ratio (Lanczos).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import UID

from framecdn.origin.rendition import JPEG, CannotRender, RenderJob, Rendition, Window

PIXEL_DATA = "7FE00010"
_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
#: The largest lookup table built for integer pixels (16-bit values: 65536 entries).
_LUT_LIMIT = 1 << 17


def render(job: RenderJob) -> bytes:
    """The encoded image of ``job`` (raises CannotRender)."""
    ds = dataset_of(job.metadata)
    pixels, photometric = decode(ds, job.frame, job.transfer_syntax_uid)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 2:
            raise CannotRender(422, f"{photometric} frame has {pixels.ndim} dimensions")
        window = job.rendition.window or stored_window(ds, job.number)
        slope, intercept = stored_rescale(ds, job.number)
        image = window_to_8_bits(pixels, slope, intercept, window)
        if photometric == "MONOCHROME1":
            np.subtract(255, image, out=image)
        mode = "L"
    else:
        image = colour_to_8_bits(ds, pixels, photometric)
        mode = "RGB"
    image = cut_region(image, job.rendition)
    picture = Image.fromarray(np.ascontiguousarray(image), mode=mode)
    picture = fit_viewport(picture, job.rendition)
    return encode(picture, job.rendition)


def dataset_of(metadata: dict[str, Any]) -> Dataset:
    """The instance's attributes (no Pixel Data) from its stored DICOM JSON."""
    body = {tag: value for tag, value in metadata.items() if tag != PIXEL_DATA}
    return Dataset.from_json(body, bulk_data_uri_handler=lambda *args: b"")


def decode(ds: Dataset, frame: bytes, transfer_syntax_uid: str) -> tuple[np.ndarray, str]:
    """One frame's pixels as pydicom decodes them, and their photometric interpretation."""
    syntax = UID(transfer_syntax_uid)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise CannotRender(501, f"no decoder for transfer syntax {syntax}") from exc
    if not decoder.is_available:
        raise CannotRender(
            501,
            f"no installed decoder for {syntax.name}: pip install 'framecdn[render]'",
        )
    options: dict[str, Any] = {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.get("BitsStored", ds.BitsAllocated) or ds.BitsAllocated),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
    }
    if options["samples_per_pixel"] > 1:
        options["planar_configuration"] = int(ds.get("PlanarConfiguration", 0) or 0)
    if syntax.is_encapsulated:
        source = encapsulate([frame])
    else:
        source, options["pixel_keyword"] = frame, "PixelData"
    try:
        pixels, meta = decoder.as_array(source, **options)
    except Exception as exc:  # the plug-ins raise what they like on a bad codestream
        raise CannotRender(422, f"frame cannot be decoded: {exc}") from exc
    photometric = meta.get("photometric_interpretation", options["photometric_interpretation"])
    return pixels, str(photometric)


def _frame_groups(ds: Dataset, number: int) -> list[Dataset]:
    """Where a frame's attributes may be: its per-frame group, the shared group, the top."""
    found: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 1 <= number <= len(per_frame):
        found.append(per_frame[number - 1])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found.append(shared[0])
    return found


def _first(value: Any) -> float | None:
    """A number, or the first of several (MultiValue), or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _window_from(item: Dataset) -> Window | None:
    center, width = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = _FUNCTIONS.get(str(item.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
    try:
        return Window(center, width, function or "linear")
    except ValueError:
        return None  # a window the standard does not allow: use the value range instead


def stored_window(ds: Dataset, number: int) -> Window | None:
    """The frame's own VOI window (first of several), or None."""
    for groups in _frame_groups(ds, number):
        for item in groups.get("FrameVOILUTSequence") or ():
            if (window := _window_from(item)) is not None:
                return window
    return _window_from(ds)


def stored_rescale(ds: Dataset, number: int) -> tuple[float, float]:
    """The frame's Rescale Slope and Intercept (1 and 0 when absent)."""
    sources: list[Dataset] = []
    for groups in _frame_groups(ds, number):
        sources.extend(groups.get("PixelValueTransformationSequence") or ())
    sources.append(ds)
    for item in sources:
        slope, intercept = _first(item.get("RescaleSlope")), _first(item.get("RescaleIntercept"))
        if slope is not None or intercept is not None:
            return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)
    return 1.0, 0.0


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 with output range 0..255, rounded (ties to even) to uint8."""
    c, w = window.center, window.width
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if window.function == "sigmoid":
            y = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        elif window.function == "linear-exact":
            y = ((values - c) / w + 0.5) * 255.0
            y = np.where(values <= c - w / 2, 0.0, np.where(values > c + w / 2, 255.0, y))
        elif w == 1:
            y = np.where(values <= c - 0.5, 0.0, 255.0)
        else:
            y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
            low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
            y = np.where(values <= low, 0.0, np.where(values > high, 255.0, y))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def window_to_8_bits(
    pixels: np.ndarray, slope: float, intercept: float, window: Window | None
) -> np.ndarray:
    """Grayscale stored values -> 8-bit display values (through a lookup table when small)."""
    if pixels.dtype.kind in "iu":
        low, high = int(pixels.min()), int(pixels.max())
        if high - low < _LUT_LIMIT:
            stored = np.arange(low, high + 1, dtype=np.float64)
            table = _to_8_bits(stored * slope + intercept, window)
            offsets = np.subtract(pixels, low, dtype=np.int32) if low else pixels
            image: np.ndarray = table[offsets]
            return image
    return _to_8_bits(pixels.astype(np.float64) * slope + intercept, window)


def _to_8_bits(values: np.ndarray, window: Window | None) -> np.ndarray:
    if window is None:  # the value range, stretched: linear-exact from min to max
        low, high = float(values.min()), float(values.max())
        if high == low:
            return np.zeros(values.shape, dtype=np.uint8)
        window = Window((low + high) / 2, high - low, "linear-exact")
    return apply_window(values, window)


def colour_to_8_bits(ds: Dataset, pixels: np.ndarray, photometric: str) -> np.ndarray:
    """RGB (or PALETTE COLOR through its LUT) as 8 bits per channel."""
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        bits = 16 if pixels.dtype.itemsize > 1 else 8
    elif photometric == "RGB" and pixels.ndim == 3 and pixels.shape[-1] == 3:
        bits = int(ds.get("BitsStored", ds.BitsAllocated) or ds.BitsAllocated)
    else:
        raise CannotRender(422, f"cannot render PhotometricInterpretation {photometric}")
    if bits > 8:
        return (pixels >> (bits - 8)).astype(np.uint8)
    return pixels.astype(np.uint8)


def cut_region(image: np.ndarray, rendition: Rendition) -> np.ndarray:
    """The viewport's source region (0 width/height: to the edge); negative sizes flip."""
    viewport = rendition.viewport
    if viewport is None or viewport.region is None:
        return image
    sx, sy, sw, sh = viewport.region
    rows, columns = image.shape[:2]
    width = sw if sw else columns - sx
    height = sh if sh else rows - sy
    x_end, y_end = min(columns, sx + abs(width)), min(rows, sy + abs(height))
    if sx >= columns or sy >= rows or x_end <= sx or y_end <= sy:
        raise CannotRender(400, f"viewport region lies outside the {columns}x{rows} image")
    region = image[sy:y_end, sx:x_end]
    if width < 0:
        region = region[:, ::-1]
    if height < 0:
        region = region[::-1]
    return region


def fit_viewport(picture: Image.Image, rendition: Rendition) -> Image.Image:
    """Scaled to fit the viewport, aspect ratio kept (no viewport: as is)."""
    viewport = rendition.viewport
    if viewport is None:
        return picture
    scale = min(viewport.width / picture.width, viewport.height / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if size == picture.size:
        return picture
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(picture: Image.Image, rendition: Rendition) -> bytes:
    out = io.BytesIO()
    if rendition.media_type == JPEG:
        # Baseline, 4:2:0 for colour (Pillow's default), as PS3.18 asks of image/jpeg.
        picture.save(out, format="JPEG", quality=rendition.quality or 90, optimize=False)
    else:
        picture.save(out, format="PNG", compress_level=3)
    return out.getvalue()
