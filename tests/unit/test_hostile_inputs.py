"""Inputs that used to exhaust memory or be misread quietly (exit 0, wrong result): each now refused or read right."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import make_image, write_dicom
from medvlkit import MedvlkitError, load_dataset
from medvlkit.apps.cli import main
from medvlkit.data.io import read_image
from medvlkit.engine.cache import EmbeddingCache
from medvlkit.errors import ImageReadError, NoSplitsError
from medvlkit.models.base import ImagePreprocessor, PreprocessCfg
from medvlkit.tasks.evaluate import evaluate_probs


def test_thin_strip_is_refused_before_the_resize_allocates(tmp_path):
    Image.new("L", (400_000, 1)).save(tmp_path / "strip.png")
    image = read_image(str(tmp_path / "strip.png"))  # 400k pixels: under the limit as a file
    with pytest.raises(ImageReadError, match="aspect ratio 400000:1"):
        ImagePreprocessor(PreprocessCfg(image_size=32))(image)


def test_on_error_skip_catches_the_strip(tiny_clip_dir, tmp_path):
    folder = tmp_path / "imgs"
    make_image(folder / "ok.png")
    Image.new("L", (400_000, 1)).save(folder / "strip.png")
    out = tmp_path / "emb"
    assert main(["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(folder), "--on-error", "skip",
                 "--workers", "0", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["n_skipped"] == 1 and res["skipped"][0]["file"].endswith("strip.png")


def test_multiframe_dicom_counts_its_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", "50000")
    assert read_image(str(write_dicom(tmp_path / "one.dcm", 100, 100))).size == (100, 100)
    with pytest.raises(ImageReadError, match="10 frame"):
        read_image(str(write_dicom(tmp_path / "many.dcm", 100, 100, frames=10)))


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "bomb.dcm", 3000, 3000, deflated=True)  # 18 MB of zeros in ~18 kB
    assert path.stat().st_size < 100_000
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="inflates to more than"):
        read_image(str(path))
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", str(10_000_000))
    assert read_image(str(path)).size == (3000, 3000)  # a trusted file reads once the limit allows it


def test_max_pixels_governs_pillows_own_check(tmp_path, monkeypatch):
    make_image(tmp_path / "a.png", size=(60, 60))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own limit far below the image
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", "10000")
    assert read_image(str(tmp_path / "a.png")).size == (60, 60)
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="over the limit of 1000"):
        read_image(str(tmp_path / "a.png"))


def _npz_with_header(path, key, shape, dtype="<u1", payload=b""):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", buf.getvalue() + payload)
    return path


def test_npz_declaring_a_huge_array_is_refused(tmp_path):
    path = _npz_with_header(tmp_path / "huge.npz", "images", (78_000, 1000, 1000))
    with pytest.raises(MedvlkitError, match="over the limit"):
        load_dataset(path)


def test_npz_zip_bomb_is_refused_without_inflating(tmp_path):
    import io

    n = 300 << 20
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (n // 784, 28, 28)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("images.npy", "w") as f:
        f.write(header.getvalue())
        zeros = bytes(1 << 20)
        for _ in range(n >> 20):
            f.write(zeros)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(MedvlkitError, match="decompression bomb"):
        load_dataset(path)


def test_npz_object_arrays_and_bad_labels_are_refused(tmp_path):
    images = np.zeros((3, 8, 8), np.uint8)
    np.savez(tmp_path / "obj.npz", images=images, labels=np.array([0, 1, {"x": 1}], dtype=object))
    with pytest.raises(MedvlkitError, match="Python objects"):
        load_dataset(tmp_path / "obj.npz")
    np.savez(tmp_path / "neg.npz", images=images, labels=np.array([0, 1, -1]))
    with pytest.raises(MedvlkitError, match="holds -1 at row 2"):  # used to become the last class
        load_dataset(tmp_path / "neg.npz")
    np.savez(tmp_path / "rows.npz", images=images, labels=np.array([0, 1]))
    with pytest.raises(MedvlkitError, match="one numeric row per image"):
        load_dataset(tmp_path / "rows.npz")
    np.savez(tmp_path / "flat.npz", images=np.zeros((3, 8), np.uint8), labels=np.array([0, 1, 1]))
    with pytest.raises(MedvlkitError, match="images must be"):
        load_dataset(tmp_path / "flat.npz")


def test_empty_class_folder_stays_a_class(tmp_path):
    make_image(tmp_path / "data" / "cardiomegaly" / "a.png")
    make_image(tmp_path / "data" / "cardiomegaly" / "b.png", seed=1)
    (tmp_path / "data" / "normal").mkdir()
    ds = load_dataset(tmp_path / "data")
    assert ds.classnames == ["cardiomegaly", "normal"] and ds.labels.shape == (2, 2)


def _csv(tmp_path, header, rows):
    for r in rows:
        make_image(tmp_path / r[0])
    (tmp_path / "l.csv").write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    return tmp_path / "l.csv"


def test_csv_label_column_with_a_stray_value_is_refused(tmp_path):
    rows = [(f"i{k}.png", str(k % 2), "2" if k == 7 else str((k + 1) % 2)) for k in range(20)]
    path = _csv(tmp_path, "path,cardiomegaly,effusion", rows)
    with pytest.raises(MedvlkitError, match="'effusion' holds labels .* but '2' in data row 8"):
        load_dataset(path)
    with pytest.raises(MedvlkitError, match="'effusion' holds labels .* but '2'"):
        load_dataset(path, label_columns="cardiomegaly,effusion")


def test_csv_split_without_a_split_column_is_refused(tmp_path):
    path = _csv(tmp_path, "path,cardiomegaly", [(f"i{k}.png", str(k % 2)) for k in range(4)])
    assert len(load_dataset(path)) == 4
    with pytest.raises(NoSplitsError, match="no 'split' column"):
        load_dataset(path, split="test")
    (tmp_path / "c.csv").write_text("path,caption\ni0.png,a chest x-ray\n")
    with pytest.raises(NoSplitsError):
        load_dataset(tmp_path / "c.csv", split="test")


def test_evaluate_refuses_non_finite_scores(tmp_path):
    labels = np.eye(2)[[0, 1, 0, 1]]
    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.8, 0.2], [0.3, 0.7]])
    with pytest.raises(MedvlkitError, match="NaN or infinite"):
        evaluate_probs(labels, probs, ["a", "b"], multilabel=False)
    (tmp_path / "p.csv").write_text("file,prob_a,prob_b\nx,0.9,0.1\ny,nan,nan\nz,inf,0\n")
    (tmp_path / "l.csv").write_text("file,label\nx,a\ny,b\nz,a\n")
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "l.csv"),
                 "--out", str(tmp_path / "ev")]) == 2


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(str(tmp_path / "r.jpg")).size == (20, 40)


def test_half_written_and_truncated_cache_shards_never_break_a_run(tmp_path):
    cache = EmbeddingCache("fp", tmp_path)
    cache.put(["a", "b"], np.ones((2, 4)))
    assert not list(cache.dir.glob(".*")), "no temporary file is left behind"
    (cache.dir / f"shard-{'0' * 32}.tmp.npz").write_bytes(b"PK\x03\x04 half")  # an old writer's leftover
    good = next(cache.dir.glob("shard-*.npz"))
    truncated = cache.dir / f"shard-{'f' * 32}.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    fresh = EmbeddingCache("fp", tmp_path)
    assert set(fresh.get(["a", "b", "c"])) == {"a", "b"}
    assert not truncated.exists() and truncated.with_name(truncated.name + ".corrupt").exists()
    assert set(EmbeddingCache("fp", tmp_path).get(["a", "b"])) == {"a", "b"}


def test_out_that_is_a_file_fails_before_any_work(tiny_clip_dir, tmp_path, monkeypatch):
    import medvlkit.engine.features as features

    monkeypatch.setattr(features, "embed_images", lambda *a, **k: pytest.fail("work started"))
    make_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "taken").write_text("x")
    for verb in (["embed"], ["zeroshot", "--classes", "a,b"]):
        assert main(verb + ["--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "imgs"), "--out",
                            str(tmp_path / "taken")]) == 2
    assert main(["caption", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs")]) == 2
