"""Reading medical images: PNG/JPEG/TIFF/BMP (8/16-bit, palette), DICOM, arrays inside .npz files.

Everything comes back as a PIL image in mode ``L`` (grey) or ``RGB``; grey becomes RGB only at the model
boundary (``ImagePreprocessor``). A pixel-count limit guards against decompression bombs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medvlkit.errors import ImageReadError, MedvlkitError

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
        with _pillow_limit(limit), Image.open(path) as im:
            if im.width * im.height > limit:
                raise ImageReadError(item, _over_limit(im.width, im.height, limit))
            im.load()
            return _to_l_or_rgb(ImageOps.exif_transpose(im))
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageReadError(item, f"{err}; over the limit of {limit} pixels (raise MEDVLKIT_MAX_PIXELS if the "
                                   "file is trusted)") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None


def _over_limit(width: int, height: int, limit: int, what: str = "pixels") -> str:
    return (f"{width}x{height} {what} is over the limit of {limit} (raise MEDVLKIT_MAX_PIXELS if the file is "
            "trusted)")


@contextlib.contextmanager
def _pillow_limit(limit: int):
    """Pillow's own decompression-bomb check follows ``limit`` while we read a file, so ``MEDVLKIT_MAX_PIXELS`` is
    the one setting that governs both. Pillow errors at twice its setting (at open, and for some formats at load);
    its warning below that is silenced because the caller compares the size with ``limit`` itself. The setting is
    left at this value (a function of the environment only, so concurrent readers agree)."""
    Image.MAX_IMAGE_PIXELS = max(1, limit // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


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
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    limit = limit or max_pixels()
    try:
        _check_deflated_dicom(path, limit)
        ds = pydicom.dcmread(path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        if rows * cols * frames > limit or samples > 4:
            raise ImageReadError(str(path), _over_limit(cols, rows, limit, f"pixels x {frames} frame(s) x {samples} "
                                                                           "sample(s)"))
        # decode the middle frame only (multi-frame files: CT/MR series, cine)
        arr = pixel_array(ds, index=frames // 2) if frames > 1 else ds.pixel_array
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(str(path), f"DICOM: {type(err).__name__}: {err}") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
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


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_deflated_dicom(path: Path, limit: int) -> None:
    """A deflated DICOM is inflated whole by pydicom before any tag can be read: inflate it here first, in chunks
    that are counted and dropped, and refuse one that grows past what ``limit`` pixels can need."""
    import zlib

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
                    raise ImageReadError(str(path), f"deflated DICOM inflates to more than {bound >> 20} MiB, more "
                                                    f"than {limit} pixels can need (raise MEDVLKIT_MAX_PIXELS if "
                                                    "the file is trusted)")
                data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)


DEFAULT_MAX_ARRAY_BYTES = 8 << 30
_MAX_COMPRESSION_RATIO = 1000  # zero-filled arrays deflate ~1000:1; real images nowhere near


def max_array_bytes() -> int:
    """The size limit of one array read from an ``.npz``: ``$MEDVLKIT_MAX_ARRAY_BYTES`` or 8 GiB."""
    return int(os.environ.get("MEDVLKIT_MAX_ARRAY_BYTES", DEFAULT_MAX_ARRAY_BYTES))


def npz_array_shape(path: str | Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an ``.npz``, read from its header without decompressing the data.

    Raises:
        MedvlkitError: the member is missing, is not an npy array, holds Python objects (pickles), declares more
            than :func:`max_array_bytes`, or is compressed so much that it can only be a decompression bomb.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = reader(f) if version in ((1, 0), (2, 0)) else \
                    np.lib.format._read_array_header(f, version)
    except KeyError:
        raise MedvlkitError(f"{path} has no array '{key}'") from None
    except Exception as err:  # noqa: BLE001 - zip and npy header errors come in many types
        raise MedvlkitError(f"{path}: array '{key}' is not a readable npy array "
                            f"({type(err).__name__}: {err})") from None
    if dtype.hasobject:
        raise MedvlkitError(f"{path}: array '{key}' holds Python objects (a pickle); refused, loading it could run "
                            "code. Save plain numeric arrays")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > max_array_bytes():
        raise MedvlkitError(f"{path}: array '{key}' declares shape {shape} of {dtype} ({nbytes / 2**30:.1f} GiB), "
                            f"over the limit of {max_array_bytes() / 2**30:.1f} GiB (raise MEDVLKIT_MAX_ARRAY_BYTES "
                            "if the file is trusted)")
    if info.compress_type and nbytes > (256 << 20) and nbytes > _MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise MedvlkitError(f"{path}: array '{key}' inflates {nbytes // max(info.compress_size, 1)}x "
                            f"({info.compress_size} -> {nbytes} bytes): refused as a decompression bomb")
    return tuple(int(d) for d in shape), dtype


def read_npz_array(path: str | Path, key: str) -> np.ndarray:
    """One array of an ``.npz``, after :func:`npz_array_shape` has checked its header (no pickles)."""
    npz_array_shape(path, key)
    with np.load(path, allow_pickle=False) as z:
        return z[key]


@functools.lru_cache(maxsize=8)
def _load_npz_array(path: str, key: str) -> np.ndarray:
    return read_npz_array(path, key)


def _read_npz_member(item: str) -> Image.Image:
    path, member = item.split("::", 1)
    m = _NPZ_MEMBER.fullmatch(member)
    if not m:
        raise ImageReadError(item, "npz item must look like file.npz::array[index]")
    try:
        arr = _load_npz_array(path, m["key"])[int(m["index"])]
    except MedvlkitError as err:
        raise ImageReadError(item, str(err)) from None
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
