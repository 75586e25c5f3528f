"""Images a model trained on never choose a hyper-parameter or count in a test number without the user saying so
(issue 26, item 4): the training manifest, the set-aside on every choosing and scoring verb, --allow-seen, the audit's
per-split overlap, and the real `lite` manifest on the real data."""

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from medvlkit.apps.cli import main
from medvlkit.data import load_dataset
from medvlkit.data.splits import holdout_indices
from medvlkit.engine.seen import holdout_without_seen, pixel_hashes, set_aside_seen
from medvlkit.errors import MedvlkitError
from medvlkit.models.training_data import read_manifest, write_pixel_manifest


def _picture(seed: int, size: int = 64) -> Image.Image:
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 3)
    field = (field - field.min()) / (field.max() - field.min())
    return Image.fromarray((field * 255).astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A train/val/test folder and a manifest of some of its images, made from *other* files: the manifest's
    originals are PNGs under one name; the dataset holds the same pixels renamed, and as lossless TIFF."""
    root, origin = tmp_path_factory.mktemp("seen_data"), tmp_path_factory.mktemp("seen_origin")
    seed = iter(range(10_000))
    planted = {"val": ["A/v0.png", "B/v1.tif"], "test": ["A/t0.png", "B/t1.tif", "B/t2.png"]}
    for split in ("train", "val", "test"):
        for cls in ("A", "B"):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                _picture(next(seed)).save(root / split / cls / f"{split}{cls}{i}.png")
    originals = []
    for split, names in planted.items():
        for k, name in enumerate(names):
            im = _picture(5_000 + len(originals))
            im.save(origin / f"pretraining_{split}_{k}.png")
            im.save(root / split / name)  # same pixels, another name (and for .tif another container)
            originals.append(origin / f"pretraining_{split}_{k}.png")
    hashes = pixel_hashes(_flat(origin), progress=False)
    manifest = write_pixel_manifest(tmp_path_factory.mktemp("m") / "manifest.txt.gz", hashes, ["planted"])
    return root, manifest


def _flat(folder: Path):
    from medvlkit.data.dataset import ImageDataset

    return ImageDataset(items=[str(p) for p in sorted(folder.glob("*.png"))], name="origin")


def _common(tiny_clip_dir, data, manifest):
    return ["--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--workers", "0", "-q", "--no-cache",
            "--training-manifest", str(manifest), "--bootstrap", "0"]


def test_probe_sets_seen_images_aside_and_says_so(world, tiny_clip_dir, tmp_path, caplog):
    data, manifest = world
    assert main(["probe", *_common(tiny_clip_dir, data, manifest), "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    seen = result["seen_by_model"]
    assert (seen["role"], seen["n_images"], seen["n_seen"], seen["set_aside"], seen["allow_seen"]) == \
        ("test", 15, 3, 3, False)
    assert seen["training_data"]["sha256"] == hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    assert result["metrics"]["n"] == 12
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        scored = {Path(r["file"]).name for r in csv.DictReader(f)}
    assert not scored & {"t0.png", "t1.tif", "t2.png"} and len(scored) == 12
    val = result["probe"]["val_seen_by_model"]
    assert (val["n_images"], val["n_seen"], val["set_aside"]) == (14, 2, 2)
    assert result["probe"]["n_val"] == 12
    assert "3 of 15 image(s) scored were in" in caplog.text and "--allow-seen" in caplog.text


def test_allow_seen_keeps_them_and_records_it(world, tiny_clip_dir, tmp_path):
    data, manifest = world
    assert main(["probe", *_common(tiny_clip_dir, data, manifest), "--allow-seen", "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert result["metrics"]["n"] == 15 and result["probe"]["n_val"] == 14
    assert (result["seen_by_model"]["n_seen"], result["seen_by_model"]["set_aside"],
            result["seen_by_model"]["allow_seen"]) == (3, 0, True)


def test_zeroshot_and_eval_score_the_same_held_out_images(world, tiny_clip_dir, tmp_path):
    data, manifest = world
    common = _common(tiny_clip_dir, data, manifest)
    assert main(["zeroshot", *common, "--split", "test", "--classes", "A,B", "--out", str(tmp_path / "z")]) == 0
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(data), "--task", "zeroshot", "--workers", "0", "-q",
                 "--no-cache", "--training-manifest", str(manifest), "--bootstrap", "0",
                 "--out", str(tmp_path / "e")]) == 0
    z = json.loads((tmp_path / "z" / "result.json").read_text())
    e = json.loads(next((tmp_path / "e").rglob("result.json")).read_text())
    assert z["metrics"]["n"] == e["metrics"]["n"] == 12
    assert z["seen_by_model"]["set_aside"] == e["seen_by_model"]["set_aside"] == 3


def test_a_test_split_the_model_trained_on_entirely_is_refused(world, tiny_clip_dir, tmp_path, capsys):
    data, _ = world
    everything = write_pixel_manifest(tmp_path / "all.txt.gz",
                                      pixel_hashes(load_dataset(data, split="test"), progress=False), ["all"])
    rc = main(["zeroshot", *_common(tiny_clip_dir, data, everything), "--split", "test", "--classes", "A,B",
               "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert rc != 0 and "all 15 images scored here were in" in err and "--allow-seen" in err
    assert not (tmp_path / "z" / "result.json").exists()


def test_held_out_validation_gives_seen_images_back_to_training(world, tiny_clip_dir):
    from medvlkit import create_model

    data, manifest = world
    model = create_model(f"hf:{tiny_clip_dir}")
    model.training_manifest_file = str(manifest)
    train = load_dataset(data, split="test")  # a split with 3 seen images, standing in for train
    labels = train.labels
    tr, va = holdout_indices(train.items, labels, 0.5, seed=0)
    tr2, va2, record = holdout_without_seen(train, model, train.items, tr, va, progress=False)
    seen_names = {"t0.png", "t1.tif", "t2.png"}
    n_seen_val = sum(Path(train.items[i]).name in seen_names for i in va)
    assert record["n_seen"] == n_seen_val and len(va2) == len(va) - n_seen_val
    assert sorted(np.concatenate([tr2, va2])) == list(range(len(train)))  # nothing lost, nothing doubled
    assert not {Path(train.items[i]).name for i in va2} & seen_names
    kept = holdout_without_seen(train, model, train.items, tr, va, allow_seen=True, progress=False)
    assert list(kept[1]) == list(va) and kept[2]["allow_seen"]


def test_an_ids_manifest_matches_on_file_names(world, tiny_clip_dir, tmp_path):
    from medvlkit import create_model

    data, _ = world
    csv_manifest = tmp_path / "training_images.csv"
    csv_manifest.write_text("dataset,image_id\nours,t0\nours,t2.png\nours,not_here\n")
    m = read_manifest(csv_manifest)
    assert m.kind == "ids" and m.values == {"t0", "t2.png", "not_here"}
    out = set_aside_seen(load_dataset(data, split="test"), create_model(f"hf:{tiny_clip_dir}"), "test",
                         training_manifest=str(csv_manifest), progress=False)
    assert out.meta["seen_by_model"]["n_seen"] == 2 and len(out) == 13
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(MedvlkitError, match="image id column"):
        read_manifest(bad)
    broken = tmp_path / "broken.txt"
    broken.write_text("# medvlkit training manifest v1 kind=pixel-sha1\nnot-a-hash\n")
    with pytest.raises(MedvlkitError, match="not a sha1"):
        read_manifest(broken)


def test_audit_reports_the_overlap_per_split(world, tiny_clip_dir, tmp_path):
    data, manifest = world
    assert main(["audit", "--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--workers", "0", "-q",
                 "--no-cache", "--training-manifest", str(manifest), "--bootstrap", "0",
                 "--out", str(tmp_path / "a")]) == 0
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    per_split = audit["seen_by_model"]["per_split"]
    assert {k: (v["n_images"], v["n_seen"]) for k, v in per_split.items()} == \
        {"train": (12, 0), "val": (14, 2), "test": (15, 3)}
    with open(tmp_path / "a" / "seen_by_model.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert audit["summary"]["seen_by_model"] == 5


def test_finetune_chooses_its_epoch_on_unseen_images_only(world, tiny_clip_dir, tmp_path):
    data, manifest = world
    out = tmp_path / "ft"
    common = [a for a in _common(tiny_clip_dir, data, manifest) if a != "--no-cache"]
    assert main(["finetune", *common, "--max-steps", "1", "--batch-size", "4",
                 "--device", "cpu", "--test-split", "test", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_val"] == 12 and summary["val_seen_by_model"]["set_aside"] == 2
    result = json.loads((out / "result.json").read_text())
    assert result["seen_by_model"]["set_aside"] == 3


def test_the_pixel_hash_store_is_reused_and_survives_damage(world, tmp_path, monkeypatch):
    data, _ = world
    ds = load_dataset(data, split="val")
    first = pixel_hashes(ds, progress=False, cache_dir=tmp_path)
    shard = next((tmp_path / "pixel_hashes").glob("*.json"))
    shard.write_text("{not json")
    assert pixel_hashes(ds, progress=False, cache_dir=tmp_path) == first
    monkeypatch.setattr("medvlkit.engine.seen._Hashes.__getitem__", lambda *a: pytest.fail("recomputed a stored hash"))
    assert pixel_hashes(ds, progress=False, cache_dir=tmp_path) == first


# The real `lite` and the real data.

def test_lite_declares_its_training_images(lite):
    m = lite.training_manifest()
    assert m.kind == "pixel-sha1" and len(m.values) == 15_544  # v2 (v1: 11,981)
    assert any("chest_xray_pneumonia" in s for s in m.sources) and any("busi_breast_ultrasound" in s for s in m.sources)


def test_lite_manifest_rebuilds_byte_for_byte(data_root, tmp_path):
    from medvlkit.models.lite import TRAINING_MANIFEST, shipped_weights_dir
    from medvlkit.tasks.pretrain.manifest import write_training_manifest

    path = write_training_manifest(data_root, tmp_path, num_workers=0, progress=False)
    assert path.read_bytes() == (shipped_weights_dir() / TRAINING_MANIFEST).read_bytes()
    assert gzip.decompress(path.read_bytes()).startswith(b"# medvlkit training manifest v1")


def test_kermany_holdout_validation_with_lite(data_root, lite):
    """What the issue found by hand: probe and finetune hold out 10% of Kermany train to choose C / the best epoch,
    and most of it was in lite's pretraining set. Test split: none."""
    train = load_dataset(data_root / "chest_xray_pneumonia", split="train")
    tr, va = holdout_indices(train.items, train.labels, 0.1, seed=0)
    _, va2, record = holdout_without_seen(train, lite, train.items, tr, va, progress=False)
    assert (record["n_images"], record["n_seen"], len(va2)) == (522, 470, 52)
    test = set_aside_seen(load_dataset(data_root / "chest_xray_pneumonia", split="test"), lite, progress=False)
    assert test.meta["seen_by_model"]["n_seen"] == 0 and len(test) == 624
