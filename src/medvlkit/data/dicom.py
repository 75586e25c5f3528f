"""Reading DICOM images the way a viewer displays them.

Order of operations (DICOM PS3.3 C.11): modality LUT (rescale slope/intercept, or a Modality LUT Sequence), then
the VOI transform: the first window (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID, C.11.2.1.2-3) or a VOI LUT
Sequence, whose output range is mapped to 0..255 (so an image lying wholly above its window is white, not black).
Without a usable window the no-window rule of :func:`medvlkit.data.intensity.scale_to_uint8` applies (8-bit data as
stored, a 16-bit copy of 8-bit data as its original, anything else by its robust range).
MONOCHROME1 is inverted; PALETTE COLOR goes through its colour LUT; multi-frame files give their middle frame.
Declared sizes are checked before anything is inflated or decoded (see :func:`read_dicom`).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from medvlkit.data.intensity import over_limit, scale_to_uint8, unit_to_uint8
from medvlkit.errors import ImageReadError, ImageTooLargeError, first_line
from medvlkit.limits import max_pixels

logger = logging.getLogger(__name__)
_DEFLATED = "1.2.840.10008.1.2.1.99"


def read_dicom(path: Path, limit: int | None = None) -> Image.Image:
    """Read a DICOM image as a PIL image in mode ``L`` (greyscale) or ``RGB``.

    Raises:
        ImageReadError: undecodable, over the pixel limit (rows x columns x frames), or a deflated file that
            inflates past what that many pixels can need; the message names the file.
    """
    import pydicom
    from pydicom.pixels import pixel_array

    limit = limit or max_pixels()
    try:
        _check_deflated_dicom(path, limit)
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
            kind = str(getattr(ds, "SOPClassUID", "unknown SOP class"))
            kind = getattr(getattr(ds, "SOPClassUID", None), "name", kind)
            raise ImageReadError(str(path), f"this DICOM file holds no image (no Pixel Data; {kind}: a structured "
                                            "report, waveform or presentation state?)")
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        if rows * cols * frames > limit or samples > 4:
            raise ImageTooLargeError(str(path), over_limit(cols, rows, limit, f"pixels x {frames} frame(s) x "
                                                                               f"{samples} sample(s)"))
        _check_frame_size(ds, path, rows, cols, frames, limit)
        # decode the middle frame only (multi-frame files: CT/MR series, cine)
        arr = pixel_array(ds, index=frames // 2) if frames > 1 else ds.pixel_array
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric.startswith("MONOCHROME"):
            grey = _display_grey(arr, ds)
            return Image.fromarray(255 - grey if photometric == "MONOCHROME1" else grey, mode="L")
        if photometric == "PALETTE COLOR":
            return Image.fromarray(_palette_rgb(arr, ds), mode="RGB")
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom and its decoders raise many types
        if "missing dependencies" in str(err) or "No available image handler" in str(err):
            syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "compressed")
            raise ImageReadError(str(path), f"pixel data is compressed ({syntax}) and no decoder for it is "
                                            "installed: pip install 'medvlkit[dicom]' (pylibjpeg, pyjpegls)") from None
        raise ImageReadError(str(path), f"DICOM: {first_line(err)}") from None
    if arr.dtype != np.uint8:  # RGB / YBR stored with more than 8 bits: scale by the declared depth
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        arr = unit_to_uint8(arr.astype(np.float64) / float(2 ** bits - 1))
    return Image.fromarray(arr).convert("RGB")


def _check_frame_size(ds, path: Path, rows: int, cols: int, frames: int, limit: int) -> None:
    """A compressed frame's own size (JPEG / JPEG-LS start of frame, JPEG 2000 SIZ), read before decoding: over the
    pixel limit, or other than the header's Rows x Columns, it is refused (the decoder would obey the frame).

    Raises:
        ImageTooLargeError / ImageReadError: as above.
    """
    from pydicom.encaps import get_frame

    from medvlkit.data.frame_size import frame_size

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed or syntax.is_deflated:
        return
    try:
        frame = get_frame(ds.PixelData, frames // 2 if frames > 1 else 0, number_of_frames=frames)
    except Exception as err:  # noqa: BLE001 - malformed encapsulation raises many types
        raise ImageReadError(str(path), f"DICOM: encapsulated pixel data is malformed ({first_line(err)})") from None
    size = frame_size(bytes(frame[:1 << 20]))
    if size is None:
        return
    width, height = size
    if width * height * frames > limit:
        raise ImageTooLargeError(str(path), over_limit(width, height, limit, f"pixels in its compressed frame x "
                                                                             f"{frames} frame(s)"))
    if (width, height) != (cols, rows):
        raise ImageReadError(str(path), f"DICOM: the compressed frame is {width}x{height} pixels but the header says "
                                        f"{cols}x{rows} (Columns x Rows); refused rather than guessed")


def _display_grey(arr: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, then the first VOI transform (window or LUT) to 0..255; robust percentiles without one."""
    from pydicom.pixels import apply_modality_lut

    values = _modality(arr, ds, apply_modality_lut)
    unit = None
    if "VOILUTSequence" in ds:
        unit = _voi_lut_table(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        unit = _voi_window(values, ds)
    return scale_to_uint8(values) if unit is None else unit_to_uint8(unit)


def _modality(arr: np.ndarray, ds, apply_modality_lut) -> np.ndarray:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if "ModalityLUTSequence" not in ds and slope is not None and intercept is not None:
        try:
            slope, intercept = float(slope), float(intercept)
        except (TypeError, ValueError):
            raise ValueError(f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r} are not numbers") from None
        return arr.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def _first(value) -> float:
    """The first of a multi-valued element (several windows: the first is the default one)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)


def voi_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2 LINEAR, C.11.2.1.3.2 LINEAR_EXACT, C.11.2.1.3.1 SIGMOID) with
    output range [0, 1].

    Raises:
        ValueError: a width the function does not allow (LINEAR needs >= 1, the others > 0).
    """
    x = np.asarray(values, dtype=np.float64)
    function = function.upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for LINEAR_EXACT")
        c, w = center, width
    else:
        if width < 1:
            raise ValueError(f"window width {width} must be >= 1 for LINEAR")
        c, w = center - 0.5, width - 1
    if w == 0:  # LINEAR with width 1: a step at the centre
        return (x > c).astype(np.float64)
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


def _voi_window(values: np.ndarray, ds) -> np.ndarray | None:
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        return voi_window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    except (TypeError, ValueError) as err:
        logger.warning("ignoring an unusable window (%s); scaling by the image's robust range", err)
        return None


def _voi_lut_table(values: np.ndarray, ds) -> np.ndarray | None:
    """The first VOI LUT of the sequence, its output scaled by the LUT's declared bit depth."""
    item = ds.VOILUTSequence[0]
    try:
        n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
        table = np.asarray(item.LUTData, dtype=np.float64).reshape(-1)
    except (AttributeError, TypeError, ValueError) as err:
        logger.warning("ignoring an unusable VOI LUT (%s); scaling by the image's robust range", err)
        return None
    n_entries = n_entries or 65536
    idx = np.clip(np.round(values) - first, 0, min(n_entries, len(table)) - 1).astype(np.int64)
    return table[idx] / float(2 ** bits - 1)


def _palette_rgb(arr: np.ndarray, ds) -> np.ndarray:
    """PALETTE COLOR -> RGB uint8 through the file's colour LUT (entries scaled by their declared bit depth)."""
    from pydicom.pixels import apply_color_lut

    rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    return unit_to_uint8(rgb / float(2 ** bits - 1))


def _check_deflated_dicom(path: Path, limit: int) -> None:
    """A deflated DICOM is inflated whole by pydicom before any tag can be read: inflate it here first, in chunks
    that are counted and dropped, and refuse one that grows past what ``limit`` pixels can need."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    if str(getattr(meta, "TransferSyntaxUID", "")) != _DEFLATED:
        return
    bound = limit * 8 + (16 << 20)  # 4 samples x 16 bits per pixel, plus room for the other tags
    with open(path, "rb") as f:
        group_length = getattr(meta, "FileMetaInformationGroupLength", None)
        if group_length is None:
            raise ImageReadError(str(path), "deflated DICOM without a File Meta Information Group Length")
        f.seek(132 + 12 + int(group_length))  # preamble, DICM, the group length element itself
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := f.read(1 << 16):
            data = inflater.decompress(chunk, 1 << 20)
            while data:
                total += len(data)
                if total > bound:
                    raise ImageTooLargeError(str(path), f"deflated DICOM inflates to more than {bound >> 20} MiB, "
                                                        f"more than {limit} pixels can need (raise "
                                                        "MEDVLKIT_MAX_PIXELS if the file is trusted)")
                data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
