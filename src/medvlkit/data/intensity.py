"""Grey values to 8 bits, one rule for every reader (:mod:`medvlkit.data.io` for image files and arrays,
:mod:`medvlkit.data.dicom` for DICOM without a display window), and the message of the pixel limit."""

from __future__ import annotations

import numpy as np

from medvlkit.errors import ImageReadError


def over_limit(width: int, height: int, limit: int, what: str = "pixels") -> str:
    """The message of an image over the pixel limit (``MEDVLKIT_MAX_PIXELS``)."""
    return (f"{width}x{height} {what} is over the limit of {limit} (raise MEDVLKIT_MAX_PIXELS if the file is "
            "trusted)")


ROBUST_PERCENTILES = (0.5, 99.5)
# How grey values without a display window become 8 bits: medvlkit's rule (below) for every model, or the full range
# of the container (a 16-bit PNG / TIFF / uint16 array divided by 65535) where a model's card says so (MedSigLIP).
HIGH_BIT_RULES = ("robust", "full_range")
_EIGHT_BIT_SHARE = 0.999  # share of pixels that must be multiples of 257 (or 256) for a 16-bit copy of 8-bit data


def scale_to_uint8(arr: np.ndarray, rule: str = "robust", full_scale: float | None = None) -> np.ndarray:
    """Grey values without a display window (16-bit PNG/TIFF, DICOM without a VOI window, float or non-8-bit npz
    arrays) to 0..255.

    With ``rule="full_range"`` and the container's ``full_scale`` (65535 for 16-bit PNG/TIFF and uint16 arrays),
    whole numbers within ``0..full_scale`` are divided by it, as MedSigLIP's model card scales 16-bit input to [0, 1]:
    a 12-bit radiograph in a 16-bit PNG stays as dark as it is stored. Anything else, and ``rule="robust"``, follows
    medvlkit's one rule:

    1. whole numbers within 0..255 (8-bit data, whatever container holds it): as stored;
    2. whole numbers up to 65535 of which at least 99.9% are multiples of 257 (the 8-to-16-bit copy PNG, TIFF and
       DICOM converters write, v x 257) or of 256 (a left shift by 8): the 8-bit image they hold, v / 257 or
       v / 256, rounded and clipped; a full-range 16-bit copy reads as its 8-bit original (within one grey level),
       and a few stray pixels do not break the rule;
    3. anything else (10-16-bit radiographs, signed or float data): the 0.5th and 99.5th percentiles become 0 and
       255, values beyond are clipped, so a few extreme pixels (a burned-in marker at 65535) do not decide the
       contrast of the whole image, as a min-max scaling would let them.

    Raises:
        ImageReadError: no pixel is a finite number (an all-NaN float image has nothing to show).
    """
    if rule not in HIGH_BIT_RULES:
        raise ValueError(f"high-bit rule {rule!r}; valid: {', '.join(HIGH_BIT_RULES)}")
    arr = np.asarray(arr, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ImageReadError("<image>", "no pixel holds a finite value (all NaN or infinite): nothing to show")
    whole = bool(np.all(finite == np.round(finite)))
    lo_v, hi_v = float(finite.min()), float(finite.max())
    if rule == "full_range" and full_scale and whole and lo_v >= 0 and hi_v <= full_scale:
        return unit_to_uint8(arr / full_scale)
    if whole and lo_v >= 0 and hi_v <= 255:
        return unit_to_uint8(arr / 255.0)
    if whole and lo_v >= 0 and hi_v <= 65535:
        for step in (257.0, 256.0):
            if np.mean(finite % step == 0) >= _EIGHT_BIT_SHARE:
                return unit_to_uint8(arr / (255.0 * step))
    lo, hi = np.percentile(finite, ROBUST_PERCENTILES)
    if hi <= lo:  # (almost) constant: fall back to the full range
        lo, hi = lo_v, hi_v
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return unit_to_uint8((arr - lo) / (hi - lo))


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] (clipped, NaN -> 0) -> uint8 0..255."""
    return np.round(np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
