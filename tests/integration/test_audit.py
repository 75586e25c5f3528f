"""`medvlkit audit` on generated data with planted duplicates, near-duplicates, a label conflict and a patient in two
splits: exact counts asserted."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from medvlkit.apps.cli import main


def _picture(seed: int, size: int = 96) -> Image.Image:
    """A smooth random picture: distinct seeds give images no hash confuses."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 4)
    field = (field - field.min()) / (field.max() - field.min())
    return Image.fromarray((field * 255).astype(np.uint8)).convert("RGB")


def _jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(buf)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    seed = iter(range(1000))
    for split in ("train", "test"):
        for cls in ("A", "B"):
            for i in range(6):
                _picture(next(seed)).save(root / split / cls / f"q{i:02d}_{split}.png") if (
                    root / split / cls).mkdir(parents=True, exist_ok=True) is None else None
    src = _picture(500)
    src.save(root / "train" / "A" / "dup1.png")            # 1: exact, across splits
    src.save(root / "test" / "A" / "dup1_copy.png")
    two = _picture(501)
    two.save(root / "train" / "B" / "dup2.png")            # 2: exact, across splits
    two.save(root / "test" / "B" / "dup2_copy.png")
    three = _picture(502)
    three.save(root / "train" / "A" / "dup3.png")          # 3: exact within train (PNG and lossless TIFF)
    three.save(root / "train" / "A" / "dup3.tif")
    near = [_picture(s) for s in (503, 504, 505, 506)]
    for k, im in enumerate(near):
        im.save(root / "train" / "B" / f"near{k}.png")
    _jpeg(near[0].resize((80, 80))).save(root / "test" / "B" / "near0_small.jpg")     # 4: resized, re-encoded
    near[1].crop((5, 5, 91, 91)).save(root / "test" / "B" / "near1_crop.png")        # 5: cropped ~5%
    near[2].rotate(90).save(root / "test" / "B" / "near2_rot.png")                     # 6: rotated
    near[3].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "train" / "B" / "near3_flip.png")  # 7: within
    conflict = _picture(507)
    conflict.save(root / "train" / "A" / "conflict.png")   # 8: the same image as A in train and B in test
    conflict.save(root / "test" / "B" / "conflict.png")
    _picture(508).save(root / "train" / "A" / "p77_scan1.png")  # a patient on both sides
    _picture(509).save(root / "test" / "A" / "p77_scan2.png")
    return root


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_audit_finds_what_was_planted(planted, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(planted), "--group-pattern", r"^(p\d+)_", "--out", str(out), "--workers", "0",
                 "-q", "--bootstrap", "50"]) == 0
    audit = json.loads((out / "audit.json").read_text())
    s = audit["summary"]
    assert (s["exact_pairs"], s["near_pairs"], s["label_conflicts"], s["leaking_groups"]) == (4, 4, 1, 1)
    assert s["cross_split_pairs"] == 6 and s["within_split_pairs"] == 2
    names = {(Path(p["file_a"]).name, Path(p["file_b"]).name) for p in audit["pairs"]}
    for a, b in (("dup1.png", "dup1_copy.png"), ("dup3.png", "dup3.tif"), ("near0.png", "near0_small.jpg"),
                 ("near1.png", "near1_crop.png"), ("near2.png", "near2_rot.png"), ("near3.png", "near3_flip.png")):
        assert (a, b) in names or (b, a) in names, (a, b)
    excluded = {Path(e["file"]).name for e in audit["exclude"]}  # the train side of every cross-split finding
    assert excluded == {"dup1.png", "dup2.png", "near0.png", "near1.png", "near2.png", "conflict.png", "p77_scan1.png"}
    assert all("/train/" in e["file"] for e in audit["exclude"])  # never a test image
    assert [r["file_a"].endswith("conflict.png") or r["file_b"].endswith("conflict.png")
            for r in _csv(out / "label_conflicts.csv")] == [True]
    assert audit["balance"]["train"]["n"] == 23 and audit["balance"]["test"]["n"] == 19
    assert (s["families"], s["images_in_families"]) == (8, 16) and len(_csv(out / "families.csv")) == 16
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "audit" and result["metrics"]["excluded_images"] == 7
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("class='pair'") == 8 and "two labels" in page


def test_a_copy_of_a_copy_of_a_test_image_is_excluded_too():
    """Families, not just pairs: train A ~ train B ~ test C excludes A and B; a family within one split excludes
    nothing; a val member goes before a test one."""
    from medvlkit.tasks.dataaudit.run import exclusion_list, families

    def pair(a, sa, b, sb):
        return {"file_a": a, "split_a": sa, "file_b": b, "split_b": sb}

    fams = families([pair("A", "train", "B", "train"), pair("B", "train", "C", "test"),
                     pair("D", "train", "E", "train"), pair("F", "val", "G", "test"), pair("G", "test", "H", "train")])
    assert [f["size"] for f in fams] == [3, 3, 2]
    excluded = {e["file"] for e in exclusion_list(fams, [])}
    assert excluded == {"A", "B", "F", "H"}


def _plain_disc(angle: float, brightness: float, seed: int) -> Image.Image:
    """A round field of view with nothing in it but smooth shading and sensor noise (a blurred cataract fundus)."""
    yy, xx = np.mgrid[:128, :128] / 127.0
    grey = brightness + 60 * (np.cos(angle) * xx + np.sin(angle) * yy)
    grey += np.random.default_rng(seed).normal(0, 0.8, grey.shape)
    grey[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 > 0.22] = 0
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


def test_plain_look_alikes_are_listed_apart_not_counted(tmp_path):
    """Two different featureless discs correlate at 0.997 (they share only their shading): once counted as a
    near-duplicate across splits with two labels, and the train one excluded. Now: listed as too plain to confirm,
    no pair, no conflict, nothing excluded. A JPEG copy of a detailed image beside them is still found."""
    root = tmp_path / "data"
    for split, cls, image, name in (("train", "A", _plain_disc(0.3, 120, 0), "disc1.png"),
                                    ("test", "B", _plain_disc(0.45, 150, 1), "disc2.png"),
                                    ("train", "A", _picture(900, 128), "detailed.png"),
                                    ("test", "A", _jpeg(_picture(900, 128).resize((100, 100)), 70), "detailed.jpg"),
                                    ("train", "B", _picture(901, 128), "other.png"),
                                    ("test", "B", _picture(902, 128), "other2.png")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        image.save(root / split / cls / name)
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(root), "--out", str(out), "--workers", "0", "-q", "--bootstrap", "0"]) == 0
    audit = json.loads((out / "audit.json").read_text())
    s = audit["summary"]
    assert (s["near_pairs"], s["label_conflicts"], s["plain_pairs"], s["excluded_images"]) == (1, 0, 1, 1)
    assert {Path(audit["pairs"][0]["file_a"]).name, Path(audit["pairs"][0]["file_b"]).name} == {
        "detailed.png", "detailed.jpg"}
    plain = _csv(out / "plain_pairs.csv")
    assert len(plain) == 1 and {Path(plain[0]["file_a"]).name, Path(plain[0]["file_b"]).name} == {
        "disc1.png", "disc2.png"} and float(plain[0]["correlation"]) > 0.99
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("class='pair'") == 2 and "too plain to confirm (1;" in page


def _texture(seed: int, size: int = 224) -> Image.Image:
    """Tissue-like detail: blobs of several sizes in three colours."""
    rng = np.random.default_rng(seed)
    planes = [gaussian_filter(rng.normal(size=(size, size)), s) * s for s in (1.5, 4, 9)]
    rgb = np.stack([sum(w * p for w, p in zip(rng.uniform(0.3, 1, 3), planes)) for _ in range(3)], -1)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _augment(image: Image.Image, angle: float, flip: bool) -> Image.Image:
    """What Augmentor (LC25000's tool) does: turn, keep the largest inner square, enlarge it back, maybe flip."""
    from medvlkit.tasks.dataaudit.hashes import inner_square

    n = image.size[0]
    c = n * (1 - inner_square(angle)) / 2
    out = image.rotate(angle, resample=Image.Resampling.BICUBIC).crop((c, c, n - c, n - c))
    out = out.resize((n, n), Image.Resampling.BICUBIC)
    return _jpeg(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out, 90)


def test_augmented_copies_of_one_original_are_one_family(tmp_path):
    """Two copies of one original, turned by +18 and -21 degrees (39 apart, zoomed differently) and one flipped, are
    copies of each other and of the original; the near-duplicate search alone misses them, --augmented finds the
    three pairs, and nothing joins the unrelated images."""
    original = _texture(0)
    images = {"orig.png": original, "copy_a.jpg": _augment(original, 18, False),
              "copy_b.jpg": _augment(original, -21, True), "other1.png": _texture(1), "other2.png": _texture(2),
              "other3.jpg": _augment(_texture(3), 10, False)}
    (tmp_path / "data" / "x").mkdir(parents=True)
    for name, image in images.items():
        image.save(tmp_path / "data" / "x" / name)
    from medvlkit import audit

    plain = audit(tmp_path / "data", tmp_path / "near", bootstrap=0)
    assert plain["summary"]["near_pairs"] + plain["summary"]["exact_pairs"] == 0
    result = audit(tmp_path / "data", tmp_path / "aug", bootstrap=0, augmented=True)
    found = {frozenset((Path(p["file_a"]).name, Path(p["file_b"]).name)) for p in result["pairs"]}
    assert found == {frozenset(p) for p in (("orig.png", "copy_a.jpg"), ("orig.png", "copy_b.jpg"),
                                              ("copy_a.jpg", "copy_b.jpg"))}
    assert result["summary"]["families"] == 1 and result["families"][0]["size"] == 3


def test_audit_shortcut_check_sees_a_planted_shortcut(tmp_path):
    """Class A's images are 64 px wide, class B's 96: image properties alone tell them apart."""
    for cls, size in (("A", 64), ("B", 96)):
        for i in range(15):
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            _picture(100 * size + i, size).save(tmp_path / "data" / cls / f"img{i}.png")
    from medvlkit import audit

    result = audit(tmp_path / "data", tmp_path / "out", bootstrap=50)
    shortcuts = result["shortcuts"]
    assert shortcuts["image_properties"]["A"]["auroc"] > 0.95 and shortcuts["flagged"] == ["A", "B"]
    assert result["splits"] == {"all": 30}


def test_audit_with_a_model_scores_its_embedding_too(planted, tiny_clip_dir, tmp_path):
    from medvlkit import audit

    result = audit(planted, tmp_path / "out", model=f"hf:{tiny_clip_dir}", bootstrap=20)
    assert set(result["shortcuts"]["model_embedding"]) == {"A", "B"}
    assert result["summary"]["exact_pairs"] == 4  # the embedding proposes candidates; the thumbnails decide


def test_exclude_drops_the_train_side_and_is_recorded(planted, tiny_clip_dir, tmp_path, caplog):
    audit_dir = tmp_path / "audit"
    assert main(["audit", "--data", str(planted), "--group-pattern", r"^(p\d+)_", "--out", str(audit_dir),
                 "--workers", "0", "-q", "--bootstrap", "0"]) == 0
    common = ["--model", f"hf:{tiny_clip_dir}", "--data", str(planted), "--workers", "0", "-q", "--no-cache",
              "--bootstrap", "0"]
    assert main(["probe", *common, "--C", "1", "--out", str(tmp_path / "plain")]) == 0
    assert main(["probe", *common, "--C", "1", "--exclude", str(audit_dir), "--out", str(tmp_path / "excl")]) == 0
    plain, excl = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("plain", "excl"))
    assert plain["audit"] == {"applied": False} and excl["audit"]["applied"] is True
    assert excl["audit"]["identity"] == json.loads((audit_dir / "audit.json").read_text())["identity"]["sha256"]
    assert excl["probe"]["excluded_by_audit"] == 7 and excl["probe"]["n_train"] == plain["probe"]["n_train"] - 7
    assert excl["metrics"]["n"] == plain["metrics"]["n"]  # never a test image
    caplog.clear()
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(planted), "--task", "zeroshot", "--prompts",
                 "pneumonia", "--out", str(tmp_path / "sweep"), "--workers", "0", "-q", "--bootstrap", "0"]) in (0, 2)
    assert "not applied here" in caplog.text  # the audit found cross-split leaks; eval says so
    caplog.clear()
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(planted), "--task", "zeroshot", "--prompts",
                 "pneumonia", "--exclude", str(audit_dir), "--out", str(tmp_path / "sweep2"), "--workers", "0", "-q",
                 "--bootstrap", "0"]) in (0, 2)
    assert "not applied here" not in caplog.text
