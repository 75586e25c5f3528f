"""End-to-end checks on the real images in $MEDVLKIT_DATA (CI sets MEDVLKIT_REQUIRE_DATA=1: no skipping)."""

import csv
import json
import shutil

import numpy as np
import pytest

from medvlkit import load_dataset
from medvlkit.apps.cli import main

pytestmark = pytest.mark.data


def _auroc_from_predictions(rows: list[dict], positive: str) -> float:
    """AUROC recomputed by scikit-learn from a run's predictions.csv (true class and the positive class's
    probability), independent of medvlkit's metrics."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([r["true"] == positive for r in rows], [float(r[f"prob_{positive}"]) for r in rows]))


def test_zeroshot_reads_every_real_chest_xray(tiny_clip_dir, data_root, tmp_path):
    folder = data_root / "chest_xray_pneumonia"
    out = tmp_path / "run"
    rc = main(["zeroshot", "--model", f"hf:{tiny_clip_dir}", "--data", str(folder), "--split", "test",
               "--prompts", "pneumonia", "--out", str(out), "--quiet", "--bootstrap", "100"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    n_files = sum(1 for p in (folder / "test").rglob("*.jpeg"))
    assert n_files == 624 and res["n_images"] == 624 and res["n_skipped"] == 0
    assert res["metrics"]["n"] == 624 and res["metrics"]["support/NORMAL"] == 234
    assert res["metrics"]["support/PNEUMONIA"] == 390
    assert res["ci"]["auroc"][0] <= res["metrics"]["auroc"] <= res["ci"]["auroc"][1]
    assert np.asarray(res["confusion_matrix"]).sum() == 624
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 624 and {r["true"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert res["metrics"]["auroc"] == pytest.approx(_auroc_from_predictions(rows, "PNEUMONIA"), abs=1e-9)
    assert {r["file"] for r in rows} == {str(p.resolve()) for p in (folder / "test").rglob("*.jpeg")}


def test_real_adapters(data_root):
    cxr = load_dataset(data_root / "chest_xray_pneumonia", split="train")
    assert len(cxr) == 5216 and cxr.classnames == ["NORMAL", "PNEUMONIA"]
    assert int(cxr.labels[:, 0].sum()) == 1341
    pm = load_dataset(data_root / "medmnist" / "pneumoniamnist.npz", split="test")
    assert len(pm) == 624 and pm.classnames == ["normal", "pneumonia"] and pm.load_image(0).size == (28, 28)
    retina = load_dataset(data_root / "medmnist" / "retinamnist.npz", split="val")
    assert len(retina) == 120 and retina.load_image(0).mode == "RGB" and len(retina.classnames) == 5
    breast = load_dataset(data_root / "medmnist" / "breastmnist.npz", split="train")
    assert len(breast) == 546
    medpix = load_dataset(data_root / "medpix2", split="test")
    assert len(medpix) == 200 and medpix.classnames == ["CT", "MR"] and all(medpix.texts)
    assert all(__import__("os").path.isfile(p) for p in medpix.items)
    assert len(load_dataset(data_root / "medpix2", split="val")) == 197
    cifar = load_dataset(data_root / "natural" / "cifar10_test_first846.npz")
    assert len(cifar) == 846 and "airplane" in cifar.classnames
    ants = load_dataset(data_root / "natural" / "hymenoptera", split="val")
    assert ants.classnames == ["ants", "bees"]


def test_dicom_folder_end_to_end(tiny_clip_dir, tmp_path):
    """Real DICOM files (pydicom's CT and MR test images) through zeroshot with the modality prompts."""
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    out = tmp_path / "run"
    assert main(["zeroshot", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path), "-p", "modality", "-o", str(out),
                 "-q", "--workers", "0"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["n_images"] == 2 and len(res["classnames"]) == 6


LITE_CARDS = {"lite": (0.9669, 0.8670, 0.970), "lite@1": (0.9455, 0.8349, 0.975)}
"""Each shipped version's headline numbers, as its model card states them (v1's card: ``weights/lite_v1``)."""


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(LITE_CARDS))
def test_lite_matches_its_model_card(data_root, lite, spec):
    """Each shipped version's two headline numbers on full test splits, pinned to its MODEL_CARD.md (to 1e-3): chest
    X-ray pneumonia AUROC / accuracy (624 images) and MedPix-2.0 CT vs MR accuracy (200 images). A silent change
    anywhere in reading, preprocessing, prompting or scoring moves them; ``lite@1`` still gives v1's numbers."""
    from medvlkit import create_model, load_prompt_set, zeroshot_classify
    from medvlkit.tasks.evaluate import evaluate_probs

    model = lite if spec == "lite" else create_model(spec)
    assert model.name == spec
    auroc, accuracy, medpix_accuracy = LITE_CARDS[spec]

    def score(folder, split, prompts):
        ds = load_dataset(folder, split=split)
        res = zeroshot_classify(model, ds, load_prompt_set(prompts), progress=False, num_workers=2)
        return evaluate_probs(res.labels, None, res.classnames, False, n_bootstrap=0, log_probs=res.log_probs).metrics

    cxr = score(data_root / "chest_xray_pneumonia", "test", "pneumonia")
    assert cxr["n"] == 624
    assert cxr["auroc"] == pytest.approx(auroc, abs=1e-3) and cxr["accuracy"] == pytest.approx(accuracy, abs=1e-3)
    medpix = score(data_root / "medpix2", "test", "modality")
    assert medpix["n"] == 200 and medpix["accuracy"] == pytest.approx(medpix_accuracy, abs=1e-3)


@pytest.mark.slow
def test_lite_v2_matches_its_card_on_the_new_sets(data_root, lite):
    """Two rows of v2's card on the test parts of sets added in v2 (``lite_splits.csv.gz``): LC25000 and BUSI
    zero-shot macro AUROC and accuracy (to 1e-3), and the gate accepting every one of those images."""
    from medvlkit import load_prompt_set, zeroshot_classify
    from medvlkit.tasks.evaluate import evaluate_probs
    from medvlkit.tasks.gate import default_gate_threshold, medical_probability
    from medvlkit.tasks.pretrain.splits import part_dataset

    rows = {"lung_histopathology_lc25000": ("lung_histopathology", 362, 0.9902, 0.9392),
            "busi_breast_ultrasound": ("busi", 220, 0.9183, 0.7045)}
    for name, (prompts, n, auroc, accuracy) in rows.items():
        ds = part_dataset(data_root, name, "test")
        res = zeroshot_classify(lite, ds, load_prompt_set(prompts), progress=False, num_workers=2)
        m = evaluate_probs(res.labels, None, res.classnames, False, n_bootstrap=0, log_probs=res.log_probs).metrics
        assert m["n"] == n and m["auroc"] == pytest.approx(auroc, abs=1e-3), name
        assert m["accuracy"] == pytest.approx(accuracy, abs=1e-3), name
        assert (medical_probability(lite, res.embeddings.vectors) >= default_gate_threshold(lite)).all(), name


def test_only_shipped_versions_of_lite_load_by_name():
    from medvlkit import create_model
    from medvlkit.errors import MedvlkitError
    from medvlkit.models.presets import PRESETS
    from medvlkit.models.registry import preset_status

    with pytest.raises(MedvlkitError, match="lite@7: no such version of lite; shipped: lite@1, lite@2"):
        create_model("lite@7")
    assert preset_status(PRESETS["lite@1"]) == preset_status(PRESETS["lite"]) == "ships with medvlkit"


def _real_cxr_subset(data_root, root, per_class: dict[str, int]):
    """train/val/test folders of symlinks to a fixed few real chest X-rays (nothing is copied). Validation comes
    from Kermany's test split (other files than test's): Kermany train is in lite's training data, and validation
    images lite trained on are set aside (medvlkit.engine.seen)."""
    for split, n in per_class.items():
        src_split = "train" if split == "train" else "test"
        offset = 0 if split != "val" else 100
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((data_root / "chest_xray_pneumonia" / src_split / cls).glob("*.jpeg"))
            (root / split / cls).mkdir(parents=True)
            for f in files[offset:offset + n]:
                (root / split / cls / f.name).symlink_to(f)
    return root


def test_lite_lora_finetune_on_real_chest_xrays(data_root, tmp_path, lite):
    """LoRA on both towers of the real `lite` model, two steps on real X-rays, then the saved adapters load
    merged and unmerged with the same embeddings."""
    import torch

    from medvlkit import create_model
    from medvlkit.tasks.finetune.saved import load_finetuned

    data = _real_cxr_subset(data_root, tmp_path / "cxr", {"train": 8, "val": 4, "test": 4})
    out = tmp_path / "run"
    assert main(["finetune", "--data", str(data), "--lora", "default", "--max-steps", "2", "--batch-size", "8",
                 "--device", "cpu", "--workers", "0", "--quiet", "--bootstrap", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["base"] == "lite" and any("_project_conv" in n for n in meta["lora_layers"])
    assert any(n.startswith("text_tower.") for n in meta["lora_layers"])
    result = json.loads((out / "result.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert result["metrics"]["n"] == 8 == len(rows)
    assert result["metrics"]["auroc"] == pytest.approx(_auroc_from_predictions(rows, "PNEUMONIA"), abs=1e-9)
    merged, unmerged = create_model(f"ft:{out / 'best'}"), load_finetuned(str(out / "best"), merge=False)
    ds = load_dataset(data, split="test")
    pixels = merged.preprocess([ds.load_image(i) for i in range(3)])
    with torch.inference_mode():
        a, b = merged.encode_image(pixels), unmerged.encode_image(pixels)
        base = lite.encode_image(pixels)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-4)  # two steps did change the model
