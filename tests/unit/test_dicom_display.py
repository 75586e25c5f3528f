"""DICOM and 16-bit images come out as a viewer shows them: the VOI window per the standard (checked against
pydicom's own windowing), palette colours applied, and robust scaling where no window is given."""

import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from helpers import write_dicom
from medvlkit.data.dicom import voi_window
from medvlkit.data.io import read_image

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def _pydicom_display(ds) -> np.ndarray:
    """pydicom's windowing, mapped from its output range [y_min, y_max] to 0..255."""
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits, slope, intercept = ds.BitsStored, float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    lo, hi = (0, 2 ** bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return np.round((out - lo) / (hi - lo) * 255)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_window_equals_pydicom(name):
    path = os.path.join(PYDICOM_FILES, name)
    got = np.asarray(read_image(path), dtype=float)
    want = _pydicom_display(pydicom.dcmread(path))
    assert np.abs(got - want).max() <= 1
    assert got.min() > 0  # the window decides the contrast; the old min-max stretch forced the darkest pixel to 0


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_functions_equal_pydicom(tmp_path, function):
    pixels = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = write_dicom(tmp_path / "w.dcm", 16, 16, pixels=pixels)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 12, 2000, 1000, function
    ds.save_as(path)
    want = _pydicom_display(pydicom.dcmread(path))
    assert np.abs(np.asarray(read_image(str(path)), dtype=float) - want).max() <= 1
    unit = voi_window(pixels, 2000, 1000, function)
    assert unit.min() >= 0 and unit.max() <= 1


def test_image_wholly_above_its_window_is_white(tmp_path):
    path = write_dicom(tmp_path / "bright.dcm", 8, 8, pixels=np.full((8, 8), 3000))
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 500, 400
    ds.save_as(path)
    assert np.asarray(read_image(str(path))).min() == 255  # min-max scaling of a constant made it black
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    assert np.asarray(read_image(str(path))).max() == 0


def test_palette_colour_is_applied():
    path = os.path.join(PYDICOM_FILES, "examples_palette.dcm")
    img = read_image(path)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr[..., 0] != arr[..., 2]).mean() > 0.1  # colours, not grey palette indices


def test_one_bright_pixel_does_not_darken_a_16bit_radiograph(tmp_path):
    rng = np.random.default_rng(0)
    body = rng.integers(800, 3800, (64, 64)).astype(np.uint16)  # a 12-bit radiograph stored in 16 bits
    marker = body.copy()
    marker[0, 0] = 65535  # a burned-in marker
    Image.fromarray(body).save(tmp_path / "a.png")
    Image.fromarray(marker).save(tmp_path / "b.png")
    a, b = (np.asarray(read_image(str(tmp_path / n)), dtype=float) for n in ("a.png", "b.png"))
    assert b.mean() > 100 and np.abs(a - b)[1:, 1:].mean() < 2  # min-max scaling gave a mean of 6.0


def test_string_rescale_and_zero_width_window(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", 8, 8, pixels=np.arange(64).reshape(8, 8) * 10)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 100, 0  # unusable: scaled by the robust range instead
    ds.save_as(path)
    assert np.asarray(read_image(str(path))).max() == 255
