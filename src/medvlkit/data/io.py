"""Reading medical images: PNG/JPEG/TIFF/BMP (8/16-bit, palette), DICOM, arrays inside .npz files.

Everything comes back as a PIL image in mode ``L`` (grey) or ``RGB``; grey becomes RGB only at the model
boundary (``ImagePreprocessor``). A pixel-count limit guards against decompression bombs.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from medvlkit.errors import ImageReadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".gif", ".webp")
DEFAULT_MAX_PIXELS = 100_000_000  # a 10k x 10k image; mammograms are ~ 4k x 6k
_NPZ_MEMBER = re.compile(r"(?P<key>[^\[]+)\[(?P<index>\d+)\]")


def max_pixels() -> int:
    """The pixel-count limit: ``$MEDVLKIT_MAX_PIXELS`` or 100 million."""
    return int(os.environ.get("MEDVLKIT_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def is_image_file(path: Path) -> bool:
    """True for file names medvlkit reads as images (by extension)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_image(item: str, limit: int | None = None) -> Image.Image:
    """Read one image item: a file path or ``<file.npz>::<array>[<index>]``.

    Args:
        item: path of an image/DICOM file, or an npz member reference.
        limit: maximum pixel count (default :func:`max_pixels`).

    Returns:
        A PIL image in mode ``L`` or ``RGB``.

    Raises:
        ImageReadError: missing, undecodable, or too large; the message names the item.
    """
    limit = limit or max_pixels()
    if "::" in item:
        return _read_npz_member(item)
    path = Path(item)
    if not path.is_file():
        raise ImageReadError(item, "no such file")
    if path.suffix.lower() in (".dcm", ".dicom") or _has_dicom_preamble(path):
        return read_dicom(path, limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > limit:
                    raise ImageReadError(item, f"{im.width}x{im.height} pixels is over the limit of {limit} "
                                               "(raise MEDVLKIT_MAX_PIXELS if the file is trusted)")
                im.load()
                return _to_l_or_rgb(im)
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im, dtype=np.float64)), mode="L")
    if im.mode in ("L", "RGB"):
        return im.copy()
    if im.mode in ("1", "LA", "La"):
        return im.convert("L")
    return im.convert("RGB")  # P (palette), RGBA, CMYK, YCbCr...


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric image to 0..255 (16-bit radiographs use a fraction of their range)."""
    arr = arr.astype(np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _has_dicom_preamble(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return False
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom(path: Path, limit: int | None = None) -> Image.Image:
    """Read a DICOM image: modality LUT (rescale slope/intercept), VOI LUT or window, MONOCHROME1 inverted.

    Multi-frame files give their middle frame.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    limit = limit or max_pixels()
    try:
        ds = pydicom.dcmread(path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > limit:
            raise ImageReadError(str(path), f"{cols}x{rows} pixels is over the limit of {limit}")
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(str(path), f"DICOM: {type(err).__name__}: {err}") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds)
        arr = _scale_to_uint8(arr)
        if photometric == "MONOCHROME1":  # high values are dark: invert so bone is bright as usual
            arr = 255 - arr
        return Image.fromarray(arr, mode="L")
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    return Image.fromarray(arr).convert("RGB")


@functools.lru_cache(maxsize=8)
def _load_npz_array(path: str, key: str) -> np.ndarray:
    with np.load(path) as z:
        if key not in z.files:
            raise KeyError(key)
        return z[key]


def _read_npz_member(item: str) -> Image.Image:
    path, member = item.split("::", 1)
    m = _NPZ_MEMBER.fullmatch(member)
    if not m:
        raise ImageReadError(item, "npz item must look like file.npz::array[index]")
    try:
        arr = _load_npz_array(path, m["key"])[int(m["index"])]
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
