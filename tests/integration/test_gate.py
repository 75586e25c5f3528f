import csv
import json

import numpy as np
import pytest

from helpers import make_image, make_image_folder
from medvlkit.apps.cli import main
from medvlkit.tasks.gate import balanced_threshold


def test_balanced_threshold_is_mid_margin():
    p = np.array([0.1, 0.2, 0.6, 0.9, 0.95])
    assert balanced_threshold(p, np.array([0, 0, 1, 1, 1])) == pytest.approx(0.55)
    # inverted scores: no threshold beats balanced accuracy 0.5, reached only at 0.3 (everything accepted)
    assert balanced_threshold(np.array([0.3, 0.7]), np.array([1, 0])) == 0.3


def test_gate_cli_thresholds_and_lists(tiny_clip_dir, tmp_path):
    for i in range(4):
        make_image(tmp_path / "inbox" / f"{i}.png", seed=i)
    base = ["gate", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "inbox"), "-q", "--workers", "0"]
    assert main(base + ["--threshold", "0", "--out", str(tmp_path / "all")]) == 0
    res = json.loads((tmp_path / "all" / "result.json").read_text())
    assert res["metrics"]["n_medical"] == 4 and res["rejected"] == [] and res["task"] == "gate"
    assert main(base + ["--threshold", "1.01", "--out", str(tmp_path / "none")]) == 0
    res = json.loads((tmp_path / "none" / "result.json").read_text())
    assert res["metrics"]["n_non_medical"] == 4 and len(res["rejected"]) == 4
    with open(tmp_path / "none" / "gate.csv", newline="") as f:
        assert {r["verdict"] for r in csv.DictReader(f)} == {"non-medical"}
    make_image_folder(tmp_path / "val_med", {"x": 2}, seed=10)
    make_image_folder(tmp_path / "val_photo", {"y": 2}, seed=20)
    assert main(base + ["--val-medical", str(tmp_path / "val_med" / "x"), "--val-non-medical",
                        str(tmp_path / "val_photo" / "y"), "--out", str(tmp_path / "val")]) == 0
    res = json.loads((tmp_path / "val" / "result.json").read_text())
    med, photo = (str((tmp_path / d).resolve()) for d in ("val_med/x", "val_photo/y"))
    assert res["threshold_source"] == f"balanced accuracy on {med} vs {photo}"  # the folders, in full
    assert main(base + ["--val-medical", str(tmp_path / "val_med"), "--out", str(tmp_path / "bad")]) == 2


def test_zeroshot_and_embed_behind_the_gate(tiny_clip_dir, tmp_path, capsys):
    make_image_folder(tmp_path / "d", {"NORMAL": 2, "PNEUMONIA": 2})
    base = ["-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "d"), "-q", "--workers", "0", "--gate"]
    assert main(["zeroshot", *base, "-p", "pneumonia", "--gate-threshold", "1.01", "--out", str(tmp_path / "z")]) == 2
    assert "gate rejected all" in capsys.readouterr().err
    assert main(["zeroshot", *base, "-p", "pneumonia", "--gate-threshold", "0", "--bootstrap", "0", "--out",
                 str(tmp_path / "z")]) == 0
    res = json.loads((tmp_path / "z" / "result.json").read_text())
    assert res["gated_out"] == [] and res["n_images"] == 4
    assert main(["embed", *base, "--gate-threshold", "1.01", "--out", str(tmp_path / "e")]) == 2
    assert "gate rejected all 4 images" in capsys.readouterr().err
    assert main(["embed", *base, "--gate-threshold", "0", "--out", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "e" / "result.json").read_text())
    assert res["gated_out"] == [] and res["metrics"]["n_images"] == 4


@pytest.mark.slow
def test_lite_gate_on_real_images(data_root, tmp_path):
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    xrays = sorted((data_root / "chest_xray_pneumonia" / "test" / "NORMAL").glob("*.jpeg"))[:4]
    photos = sorted((data_root / "natural" / "hymenoptera" / "val" / "bees").glob("*.jpg"))[:4]
    for p in xrays + photos:
        shutil.copy(p, inbox / p.name)
    assert main(["gate", "-d", str(inbox), "-q", "--out", str(tmp_path / "g")]) == 0
    with open(tmp_path / "g" / "gate.csv", newline="") as f:
        verdict = {r["file"].rsplit("/", 1)[-1]: r["verdict"] for r in csv.DictReader(f)}
    assert all(verdict[p.name] == "medical" for p in xrays)
    assert all(verdict[p.name] == "non-medical" for p in photos)


def test_filter_dataset_hands_on_its_embeddings(tiny_clip_dir, tmp_path):
    from medvlkit import create_model, embed_images, load_dataset
    from medvlkit.tasks.gate import filter_dataset, medical_probability

    model = create_model(f"hf:{tiny_clip_dir}")
    ds = load_dataset(make_image_folder(tmp_path / "d", {"a": 3, "b": 3}))
    p = medical_probability(model, embed_images(model, ds, cache=False, progress=False).vectors)
    thr = float(np.median(p))
    kept, rejected, emb = filter_dataset(model, ds, thr, cache=False, progress=False)
    assert len(kept) + len(rejected) == 6 and len(kept) == int((p >= thr).sum())
    assert emb.items == kept.items
    np.testing.assert_allclose(emb.vectors, embed_images(model, kept, cache=False, progress=False).vectors,
                               rtol=1e-5, atol=1e-6)


def test_gate_backed_by_a_probe(tiny_clip_dir, tmp_path, capsys):
    for split in ("train", "val", "test"):
        make_image_folder(tmp_path / "g" / split, {"medical": 4, "non-medical": 4}, seed=len(split))
    base = ["-m", f"hf:{tiny_clip_dir}", "-q", "--workers", "0"]
    assert main(["probe", *base, "-d", str(tmp_path / "g"), "--out", str(tmp_path / "p"), "--bootstrap", "0"]) == 0
    for i in range(3):
        make_image(tmp_path / "inbox" / f"{i}.png", seed=100 + i)
    assert main(["gate", *base, "-d", str(tmp_path / "inbox"), "--probe", str(tmp_path / "p" / "probe.npz"),
                 "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["threshold"] == 0.5 and res["metrics"]["n_images"] == 3
    make_image_folder(tmp_path / "h" / "train", {"cats": 3, "dogs": 3})
    make_image_folder(tmp_path / "h" / "test", {"cats": 2, "dogs": 2})
    assert main(["probe", *base, "-d", str(tmp_path / "h"), "--C", "1", "--out", str(tmp_path / "q"),
                 "--bootstrap", "0"]) == 0
    capsys.readouterr()
    assert main(["gate", *base, "-d", str(tmp_path / "inbox"), "--probe", str(tmp_path / "q" / "probe.npz"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "class named 'medical'" in capsys.readouterr().err


def test_gate_without_a_validated_threshold_asks_for_one(tiny_clip_dir, tmp_path, capsys):
    """lite's validated threshold is never used for another model: the user gives one (or validation folders)."""
    for i in range(3):
        make_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    base = ["zeroshot", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "imgs"), "--classes", "a,b", "-q",
            "--workers", "0", "--gate"]
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "no validated medical-image gate threshold" in capsys.readouterr().err
    assert main(base + ["--gate-threshold", "0.0", "--out", str(tmp_path / "b")]) == 0
