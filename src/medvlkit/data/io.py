"""Reading medical images: PNG/JPEG/TIFF/BMP (8/16-bit, palette), DICOM, arrays inside .npz files.

Everything comes back as a PIL image in mode ``L`` (grey) or ``RGB``; grey becomes RGB only at the model
boundary (``ImagePreprocessor``). A pixel-count limit guards against decompression bombs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from medvlkit.data.intensity import over_limit, scale_to_uint8
from medvlkit.data.items import is_dicomweb_item, is_npz_item, parse_npz_item
from medvlkit.errors import ImageReadError, ImageTooLargeError, MedvlkitError
from medvlkit.limits import DEFAULT_MAX_PIXELS, max_pixels  # noqa: F401 (read here by callers)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".gif", ".webp")


_NPY_FORMAT: Any = np.lib.format  # its private _read_array_header reads headers of versions past 2.0


def _set_pillow_limit(limit: int) -> None:
    """Pillow's own decompression-bomb check (which every Pillow decode obeys, pydicom's JPEG frames included)
    follows medvlkit's limit: Pillow errors at twice its setting."""
    Image.MAX_IMAGE_PIXELS = max(1, limit // 2)


_set_pillow_limit(max_pixels())  # once at import; every read re-applies it (the environment may change)


def is_image_file(path: Path) -> bool:
    """True for file names medvlkit reads as images (by extension)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_image(item: str, limit: int | None = None, draft: int | None = None,
               high_bit: str = "robust") -> Image.Image:
    """Read one image item: a file path or ``<file.npz>::<array>[<index>]``.

    Args:
        item: path of an image/DICOM file, an npz member reference, or a ``dicomweb:`` instance (fetched from the
            PACS on first use: :func:`medvlkit.data.dicomweb.fetch_instance`).
        limit: maximum pixel count (default :func:`max_pixels`).
        draft: for a JPEG at least twice this size on both sides, decode at a reduced scale (libjpeg's DCT scaling,
            PIL's ``draft``: 1/2, 1/4 or 1/8) that keeps both sides at least ``2 * draft``; other files are decoded
            whole. Several times faster on 2-3k px radiographs; the pixels differ slightly from a full decode.
        high_bit: how 16-bit raster images and uint16 arrays become 8 bits (``robust``: medvlkit's rule;
            ``full_range``: divided by 65535; :func:`~medvlkit.data.intensity.scale_to_uint8`). DICOM files follow
            their display window, or medvlkit's rule, either way.

    Returns:
        A PIL image in mode ``L`` or ``RGB``.

    Raises:
        ImageReadError: missing, undecodable, or too large; the message names the item.
    """
    limit = limit or max_pixels()
    if is_dicomweb_item(item):  # an instance on a PACS: fetched once into the cache, then read as a DICOM file
        from medvlkit.data.dicom import read_dicom
        from medvlkit.data.dicomweb import fetch_instance

        try:
            return read_dicom(fetch_instance(item), limit)
        except ImageReadError as err:
            raise type(err)(item, err.reason) from None
    if is_npz_item(item):
        return _read_npz_member(item, high_bit)
    path = Path(item)
    if not path.is_file():
        raise ImageReadError(item, "no such file")
    if path.suffix.lower() in (".dcm", ".dicom") or _has_dicom_preamble(path):
        from medvlkit.data.dicom import read_dicom

        return read_dicom(path, limit)
    return _read_pillow(path, item, limit, draft, high_bit=high_bit)


# The raster formats medvlkit reads (by content, whatever a file is called), with their leading bytes.
_SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "TIFF": (b"II*\x00", b"MM\x00*"),
               "BMP": (b"BM",), "GIF": (b"GIF87a", b"GIF89a")}


def image_kind(head: bytes) -> str | None:
    """The image format that a file's first bytes announce (``PNG``, ``JPEG``, ``TIFF``, ``BMP``, ``GIF``, ``WEBP``
    or ``DICOM``, the last with its 128-byte preamble and ``DICM``), or None for anything else."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for kind, sigs in _SIGNATURES.items() if any(head.startswith(s) for s in sigs)), None)


def read_image_bytes(data: bytes, name: str = "upload", limit: int | None = None,
                     draft: int | None = None, high_bit: str = "robust") -> Image.Image:
    """:func:`read_image` for a file's bytes (an upload): the same formats, pixel limit and conversions.

    Raises:
        ImageReadError: not a supported image format (by content), undecodable, or (:class:`ImageTooLargeError`)
            over the pixel limit; the message names ``name``.
    """
    import io
    import tempfile

    limit = limit or max_pixels()
    kind = image_kind(data[:132])
    if kind is None:
        raise ImageReadError(name, "not a PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM (Part 10, with its preamble) file")
    if kind == "DICOM":  # pydicom's size checks (deflated files) read from a path
        from medvlkit.data.dicom import read_dicom

        with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
            f.write(data)
            f.flush()
            try:
                return read_dicom(Path(f.name), limit)
            except ImageReadError as err:
                raise type(err)(name, err.reason) from None
    return _read_pillow(io.BytesIO(data), name, limit, draft, formats=[kind], high_bit=high_bit)


def declared_pixels(data: bytes, name: str = "upload") -> int:
    """The pixels an image file's header says a decode will produce (the first frame of a raster file, one frame of
    a DICOM), read without decoding anything: a request can be sized before any memory is spent on it.

    Raises:
        ImageReadError: not a supported image, or a header that cannot be read (``ImageTooLargeError`` past
            Pillow's own hard limit).
    """
    import io

    kind = image_kind(data[:132])
    if kind is None:
        raise ImageReadError(name, "not a PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM (Part 10, with its preamble) file")
    try:
        if kind == "DICOM":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
        with _pillow_limit(max_pixels()), Image.open(io.BytesIO(data), formats=[kind]) as im:
            return int(im.width) * int(im.height)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(name, str(err)) from None
    except Exception as err:  # noqa: BLE001 - header parsers raise many types
        raise ImageReadError(name, f"unreadable image header ({type(err).__name__}: {err})") from None


def _read_pillow(source: Any, item: str, limit: int, draft: int | None,
                 formats: list[str] | None = None, high_bit: str = "robust") -> Image.Image:
    """Decode ``source`` (a path or a binary file object) with Pillow, within the pixel ``limit``."""
    try:
        with _pillow_limit(limit), Image.open(source, formats=formats) as im:
            if im.width * im.height > limit:
                raise ImageTooLargeError(item, over_limit(im.width, im.height, limit))
            if draft and im.format == "JPEG" and min(im.size) >= 4 * draft:  # 1/2 scale at least leaves 2 * draft
                im.draft(im.mode, (2 * draft, 2 * draft))
            im.load()
            return _to_l_or_rgb(ImageOps.exif_transpose(im), high_bit)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(item, f"{err}; over the limit of {limit} pixels (raise MEDVLKIT_MAX_PIXELS if the "
                                       "file is trusted)") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None


@contextlib.contextmanager
def _pillow_limit(limit: int) -> Iterator[None]:
    """Pillow's own decompression-bomb check follows ``limit`` while we read a file, so ``MEDVLKIT_MAX_PIXELS`` is
    the one setting that governs both. Pillow errors at twice its setting (at open, and for some formats at load);
    its warning below that is silenced because the caller compares the size with ``limit`` itself. The setting is
    left at this value (a function of the environment only, so concurrent readers agree)."""
    _set_pillow_limit(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _to_l_or_rgb(im: Image.Image, high_bit: str = "robust") -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit PNGs open as I;16 or I: full scale 65535
        full = None if im.mode == "F" else 65535.0
        return Image.fromarray(scale_to_uint8(np.asarray(im, dtype=np.float64), high_bit, full), mode="L")
    if im.mode in ("L", "RGB"):
        return im.copy()
    if im.mode in ("1", "LA", "La"):
        return im.convert("L")
    return im.convert("RGB")  # P (palette), RGBA, CMYK, YCbCr...


def _has_dicom_preamble(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return False
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


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
                    _NPY_FORMAT._read_array_header(f, version)
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


def _read_npz_member(item: str, high_bit: str = "robust") -> Image.Image:
    parsed = parse_npz_item(item)
    if parsed is None:
        raise ImageReadError(item, "npz item must look like file.npz::array[index]")
    path, key, index = parsed
    try:
        arr = _load_npz_array(path, key)[index]
    except MedvlkitError as err:
        raise ImageReadError(item, str(err)) from None
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ImageReadError(item, f"{type(err).__name__}: {err}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = scale_to_uint8(arr, high_bit, 65535.0 if arr.dtype == np.uint16 else None)
    return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")


def pixel_hash(image: Image.Image) -> str:
    """sha1 of the decoded image: its mode, size and pixel values (the same picture saved as PNG and as lossless
    TIFF, or under two names, hashes the same; any changed pixel does not). The audit's exact duplicates and the
    models' training manifests (:mod:`medvlkit.engine.seen`) both identify images by it."""
    h = hashlib.sha1(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    h.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return h.hexdigest()
