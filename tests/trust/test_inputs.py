"""Issue 25, items 12 (DICOM frame sizes), 16 (the same image at 8 and 16 bits), 17 (a user's own CSV), 18 (silent
losses) and the input parts of 20. Each test failed on the main of 2026-12-06."""

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image, write_dicom
from medvlkit import MedvlkitError, load_dataset
from medvlkit.apps.cli import main
from medvlkit.data.io import read_image
from medvlkit.errors import ImageReadError, ImageTooLargeError

QUIET = ["--quiet", "--workers", "0", "--no-cache"]


def _films(data_root: Path, n: int) -> list[Path]:
    test = data_root / "chest_xray_pneumonia" / "test"
    return [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((test / cls).glob("*.jpeg"))[: n // 2]]


@pytest.mark.slow
def test_item16_a_film_reads_the_same_at_8_and_16_bits(lite, data_root, tmp_path):
    """A 16-bit PNG (x 257) or an un-windowed DICOM copy of an 8-bit chest film flipped 8 of 84 zero-shot labels
    (max |dP| 0.75): the percentile stretch applied to high bit depths only."""
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.tasks.zeroshot import zeroshot_classify

    kinds = ("png8", "png16", "dcm8", "dcm16")
    for i, film in enumerate(_films(data_root, 24)):
        grey = np.asarray(Image.open(film).convert("L"))
        cls = film.parent.name
        for kind in kinds:
            (tmp_path / kind / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(tmp_path / "png8" / cls / f"{i}.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "png16" / cls / f"{i}.png")
        write_dicom(tmp_path / "dcm8" / cls / f"{i}.dcm", *grey.shape, pixels=grey, bits=8)
        write_dicom(tmp_path / "dcm16" / cls / f"{i}.dcm", *grey.shape, pixels=grey.astype(np.uint16) * 257)
        want = grey.astype(int)
        for kind in kinds[1:]:
            got = np.asarray(read_image(str(next((tmp_path / kind / cls).glob(f"{i}.*")))), dtype=int)
            assert np.abs(got - want).max() <= 1, kind
    probs = {k: zeroshot_classify(lite, load_dataset(tmp_path / k), load_prompt_set("pneumonia"), cache=False,
                                  num_workers=0, progress=False).probs for k in kinds}
    for kind in kinds[1:]:
        assert np.abs(probs[kind] - probs["png8"]).max() < 1e-4, kind
        assert (probs[kind].argmax(1) == probs["png8"].argmax(1)).all()


def test_item16_high_bit_depth_still_resists_a_hot_pixel(tmp_path):
    rng = np.random.default_rng(0)
    twelve = (np.linspace(0, 4095, 64)[None, :] * np.ones((64, 1)) + rng.normal(0, 20, (64, 64))).clip(0, 4095)
    twelve = twelve.astype(np.uint16)
    hot = twelve.copy()
    hot[5, 5] = 65535  # a burned-in marker
    Image.fromarray(twelve).save(tmp_path / "plain.png")
    Image.fromarray(hot).save(tmp_path / "hot.png")
    a, b = (np.asarray(read_image(str(tmp_path / f)), dtype=int) for f in ("plain.png", "hot.png"))
    b[5, 5] = a[5, 5]
    assert np.abs(a - b).max() <= 1 and a.max() == 255 and a.min() == 0  # the hot pixel decides nothing
    copy = np.asarray(read_image(str(tmp_path / "plain.png")))  # a 12-bit image is stretched, not darkened
    assert copy.mean() > 100
    stray = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint16) * 257
    stray[0, 0] = 1234  # one pixel that is no multiple of 257: still read as the 8-bit image
    Image.fromarray(stray).save(tmp_path / "stray.png")
    got = np.asarray(read_image(str(tmp_path / "stray.png")), dtype=int)
    assert np.abs(got - stray // 257).ravel()[1:].max() == 0


def test_item20_an_all_nan_float_image_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match="finite"):
        read_image(str(tmp_path / "nan.tif"))


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def test_item12_a_dicom_frame_larger_than_its_header_is_never_decoded(tmp_path, monkeypatch):
    """Rows = Columns = 64 in front of a 12,000 x 12,000 JPEG frame: the frame was decoded whole."""
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", "4000000")
    big = write_dicom(tmp_path / "big.dcm", 64, 64, bits=8, jpeg_frame=_jpeg(3000, 3000))
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="compressed frame"):
        read_image(str(big))
    assert time.perf_counter() - start < 1.0
    other = write_dicom(tmp_path / "other.dcm", 64, 64, bits=8, jpeg_frame=_jpeg(80, 64))
    with pytest.raises(ImageReadError, match="80x64 pixels but the header says 64x64"):
        read_image(str(other))
    ok = write_dicom(tmp_path / "ok.dcm", 48, 64, bits=8, jpeg_frame=_jpeg(64, 48))
    assert read_image(str(ok)).size == (64, 48)


def test_item12_pillow_limit_is_set_at_import():
    import subprocess
    import sys

    code = "import medvlkit.data.io, PIL.Image as I; print(I.MAX_IMAGE_PIXELS)"
    env = dict(os.environ, MEDVLKIT_MAX_PIXELS="1000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "500"


def _csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    for i in range(len(rows)):
        make_image(tmp_path / f"{i}.png", seed=i)
    path = tmp_path / "labels.csv"
    path.write_text(header + "\n" + "".join(f"{i}.png,{r}\n" for i, r in enumerate(rows)))
    return path


@pytest.mark.parametrize("column", ["label", "labels", "class", "target", "diagnosis"])
def test_item17_a_class_column_by_its_usual_names(tmp_path, column, caplog):
    path = _csv(tmp_path, f"file,{column}", ["normal", "pneumonia", "normal", "pneumonia"])
    ds = load_dataset(path)
    assert ds.classnames == ["normal", "pneumonia"] and not ds.multilabel
    assert ds.labels.tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]
    assert f"class names in '{column}'" in caplog.text  # one line saying what was inferred


def test_item17_one_binary_column_is_one_binary_label(tiny_clip_dir, tmp_path, caplog):
    """file,pneumonia with 0/1 was read as multi-label and then asked for --mode pos_neg."""
    path = _csv(tmp_path, "file,pneumonia", ["0", "1", "1", "0"])
    ds = load_dataset(path)
    assert ds.classnames == ["no pneumonia", "pneumonia"] and not ds.multilabel
    assert ds.labels[:, 1].tolist() == [0, 1, 1, 0]
    assert main(["zeroshot", "--model", f"hf:{tiny_clip_dir}", "--data", str(path), "--prompts", "pneumonia",
                 "--out", str(tmp_path / "run"), "--bootstrap", "0", *QUIET]) == 0
    assert "one binary label 'pneumonia'" in caplog.text
    assert json.loads((tmp_path / "run" / "result.json").read_text())["softmax_over"] == ["no pneumonia", "pneumonia"]
    with_unknown = _csv(tmp_path / "u", "file,pneumonia", ["0", "1", "", "0"])
    with pytest.raises(MedvlkitError, match="unknown"):
        load_dataset(with_unknown)
    assert load_dataset(with_unknown, label_columns="pneumonia").multilabel  # named: kept a multi-label column


def test_item20_a_stray_value_never_drops_a_label_column(tmp_path):
    """Two rows, one stray value: the column stopped being a label column (under 90% labels), dropped unnamed."""
    path = _csv(tmp_path, "file,effusion,edema", ["1,0", "x,1"])
    with pytest.raises(MedvlkitError, match="'effusion' holds labels .* but 'x'"):
        load_dataset(path)


def test_item20_csv_and_folder_options_that_do_not_apply_are_refused(tmp_path):
    for i in range(2):
        make_image(tmp_path / "f" / f"{i}.png", seed=i)
    with pytest.raises(MedvlkitError, match="--path-column: the 'folder' format"):
        load_dataset(tmp_path / "f", path_column="img")
    with pytest.raises(MedvlkitError, match="--uncertain"):
        load_dataset(tmp_path / "f", uncertain="zeros")


def test_item20_jsonl_captions_must_be_text(tmp_path):
    make_image(tmp_path / "a.png")
    for value, shown in ((None, "null"), ({"findings": "x"}, '"findings"'), ("", None)):
        path = tmp_path / "pairs.jsonl"
        path.write_text(json.dumps({"image": "a.png", "text": value}) + "\n")
        with pytest.raises(MedvlkitError, match=shown or "no 'image' or no 'text'"):
            load_dataset(path)


def test_item20_evaluate_refuses_what_it_would_count_wrong(tmp_path, capsys):
    pred = tmp_path / "p.csv"
    labels = tmp_path / "l.csv"
    labels.write_text("file,label\na,x\nb,y\n")
    cases = {"duplicate": "file,prob_x,prob_y\na,0.9,0.1\na,0.9,0.1\nb,0.2,0.8\n",
             "out of range": "file,prob_x,prob_y\na,9,-3\nb,0.2,0.8\n"}
    for name, text in cases.items():
        pred.write_text(text)
        assert main(["evaluate", "--predictions", str(pred), "--labels", str(labels), "--out",
                     str(tmp_path / name.replace(" ", "_"))]) == 2, name
    err = capsys.readouterr().err
    assert "more than one row" in err and "must lie in [0, 1]" in err
    pred.write_text("file,prob_x,prob_y\na,0.9,0.1\nb,0.2,0.8\n")
    labels.write_text("file,label\na,x\na,y\nb,y\n")
    assert main(["evaluate", "--predictions", str(pred), "--labels", str(labels), "--out", str(tmp_path / "e")]) == 2
    labels.write_text("file,x,y\na,yes,0\nb,0,1\n")
    assert main(["evaluate", "--predictions", str(pred), "--labels", str(labels), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "labelled two ways" in err and "'yes'" in err and "Traceback" not in err


def test_item18_an_existing_out_is_never_overwritten_silently(tiny_clip_dir, tmp_path, capsys):
    for i in range(2):
        make_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    argv = ["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
            *QUIET]
    assert main(argv) == 0
    before = (tmp_path / "o" / "result.json").read_text()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "result.json").read_text() == before
    assert main([*argv, "--overwrite"]) == 0


def test_item18_dicom_without_an_extension_is_read_and_other_entries_listed(tiny_clip_dir, tmp_path):
    """A DICOM file named by its UID alone was skipped silently in a folder that also held other images; FIFOs,
    symbolic link loops, dangling links and folders named like images were ignored without a word."""
    folder = tmp_path / "imgs"
    make_image(folder / "a.png", seed=1)
    write_dicom(folder / "1.2.840.113619.2.55", 16, 16, pixels=np.arange(256).reshape(16, 16) * 100)
    (folder / "notes.txt").write_text("not an image")
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.png").symlink_to(tmp_path / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dir.png").mkdir()
    ds = load_dataset(folder)
    assert sorted(Path(p).name for p in ds.items) == ["1.2.840.113619.2.55", "a.png"]
    reasons = {Path(f).name: why for f, why in ds.skipped}
    assert set(reasons) == {"notes.txt", "pipe.png", "dangling.png", "loop.png", "dir.png"}
    assert "FIFO" in reasons["pipe.png"] and "loop" in reasons["loop.png"] and "dangling" in reasons["dangling.png"]
    out = tmp_path / "run"
    assert main(["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(folder), "--out", str(out), *QUIET]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["metrics"]["n_images"] == 2 and res["n_skipped"] == 5
    assert {Path(s["file"]).name for s in res["skipped"]} == set(reasons)


