import numpy as np
import pytest
from PIL import Image

from helpers import make_image
from medvlkit import ImageReadError, read_image


def test_png_jpeg_bmp_tiff(tmp_path):
    for suffix in (".png", ".jpg", ".bmp", ".tif"):
        im = read_image(str(make_image(tmp_path / f"a{suffix}")))
        assert im.mode == "RGB" and im.size == (40, 36)


def test_16bit_png_is_scaled_to_full_range(tmp_path):
    path = tmp_path / "x16.png"
    arr = np.zeros((8, 10), np.uint16)
    arr[:, 5:] = 1000  # a 16-bit radiograph using a small part of its range
    Image.fromarray(arr).save(path)
    im = read_image(str(path))
    out = np.asarray(im)
    assert im.mode == "L" and out.min() == 0 and out.max() == 255


def test_palette_and_greyscale(tmp_path):
    p = tmp_path / "p.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(p)
    assert read_image(str(p)).mode == "RGB"
    g = make_image(tmp_path / "g.png", mode="L")
    assert read_image(str(g)).mode == "L"


def test_pixel_limit(tmp_path):
    p = make_image(tmp_path / "big.png", size=(100, 100))
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(str(p), limit=5000)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(str(bad))


def test_pydicom_ct_and_mr():
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        im = read_image(get_testdata_file(name))
        arr = np.asarray(im)
        assert im.mode == "L" and arr.max() - arr.min() > 150  # windowed exactly: see test_dicom_display.py


def _write_dicom(path, arr, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = np.zeros((4, 4), np.uint16)
    arr[0, 0] = 4000
    m2 = np.asarray(read_image(str(_write_dicom(tmp_path / "m2.dcm", arr))))
    m1 = np.asarray(read_image(str(_write_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1"))))
    assert m2[0, 0] == 255 and m1[0, 0] == 0 and m1[1, 1] == 255


def test_dicom_window_is_applied(tmp_path):
    arr = np.array([[0, 1000, 1040, 1080, 3000]], np.uint16)  # HU = value - 1024 after the intercept
    im = np.asarray(read_image(str(_write_dicom(tmp_path / "w.dcm", arr, intercept=-1024, window=(40, 80)))))
    # window 40 +- 40 HU spans 0..80 HU: -1024 and -24 HU are black, 1976 HU white, 16 HU is 20% grey
    assert im[0, 0] == 0 and im[0, 1] == 0 and im[0, 4] == 255 and 45 < im[0, 2] < 58


def test_dicom_without_extension_is_detected(tmp_path):
    p = _write_dicom(tmp_path / "IM0001", np.arange(16, dtype=np.uint16).reshape(4, 4))
    assert read_image(str(p)).mode == "L"


def test_npz_member(tmp_path):
    np.savez(tmp_path / "m.npz", test_images=np.zeros((3, 28, 28), np.uint8))
    assert read_image(f"{tmp_path / 'm.npz'}::test_images[2]").size == (28, 28)
    with pytest.raises(ImageReadError):
        read_image(f"{tmp_path / 'm.npz'}::test_images[9]")


def test_draft_decodes_large_jpegs_at_reduced_scale_only(tmp_path):
    """`draft` (--fast-decode) lets libjpeg decode a large JPEG at 1/2..1/8 scale, never below twice the requested
    size; small JPEGs and other formats are decoded whole."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (1000, 1200), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    assert read_image(str(tmp_path / "big.jpg")).size == (1200, 1000)
    assert read_image(str(tmp_path / "big.jpg"), draft=224).size == (600, 500)  # 1/2: both sides >= 448
    assert read_image(str(tmp_path / "big.jpg"), draft=120).size == (300, 250)  # 1/4: both sides >= 240
    assert read_image(str(tmp_path / "big.jpg"), draft=300).size == (1200, 1000)  # under 4 x 300: whole
    assert read_image(str(tmp_path / "big.png"), draft=120).size == (1200, 1000)


def test_fast_decode_embeddings_are_cached_apart(tiny_clip_dir, tmp_path):
    from medvlkit import create_model, embed_images, load_dataset

    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    model, ds = create_model(f"hf:{tiny_clip_dir}"), load_dataset(tmp_path, format="folder")
    cache = tmp_path / "cache"
    full = embed_images(model, ds, cache_dir=str(cache), progress=False)
    fast = embed_images(model, ds, cache_dir=str(cache), progress=False, fast_decode=True)
    assert full.n_cached == 0 and fast.n_cached == 0  # a full decode's vectors never answer a fast one
    assert not np.allclose(full.vectors, fast.vectors)  # 300 px >= 4 x 32: decoded at a reduced scale
    assert embed_images(model, ds, cache_dir=str(cache), progress=False, fast_decode=True).n_cached == 2
