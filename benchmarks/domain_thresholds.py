"""The domain check's thresholds for a model, chosen on validation images only, and what they accept on test data.

For each modality of the ``modality`` prompt set with validation images, the P(modality) threshold with the best
balanced accuracy (the gate's rule) between that modality's validation images and every other validation image
(other modalities and ordinary photos). Validation images (for ``lite``: its pretraining's validation parts, plus
the validation splits of data it never saw):

- chest x-ray: the Kermany train patients pretraining held out (pretrain/corpus.in_val), PneumoniaMNIST val, the
  adult films' val part;
- CT, MR: MedPix-2.0 dev, by its Type, and the brain MRI val part; fundus photograph: RetinaMNIST val and the fundus
  set's val part; ultrasound: BUSI's val part; histopathology: LC25000's val part (parts: ``lite_splits.csv.gz``);
- ordinary photos (negatives only): hymenoptera val, CIFAR-10 test images 500-599.

Then the share of each test set the check accepts as each prompt set's domain: the official test splits and the
test parts of the five sets v2 added. ``--write`` stores the thresholds and the model card's scope in
``src/medvlkit/models/weights/lite_config.json``.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/domain_thresholds.py [--model lite] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from medvlkit import create_model, load_dataset
from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.answer import answer
from medvlkit.engine.features import embed_images
from medvlkit.tasks.domain import domain_vectors
from medvlkit.tasks.gate import balanced_threshold
from medvlkit.tasks.pretrain.corpus import cxr_patient, in_val
from medvlkit.tasks.pretrain.splits import part_dataset

LITE_SCOPE = ("lite (v2) was trained on paediatric chest X-rays from one hospital (Kermany 2018, PneumoniaMNIST), "
              "adult chest films of two sources (COVID-19 Radiography: class confounded with hospital), MedPix-2.0 CT "
              "and MR, brain MRI slices, BUSI breast ultrasound, LC25000 lung histopathology, colour fundus "
              "photographs (RetinaMNIST, a four-disease Kaggle set) and ordinary photos; each of those label spaces "
              "is seen, not zero-shot, and it is not validated on other hospitals, devices or diseases (see its "
              "model card)")


def _where(ds: ImageDataset, keep) -> ImageDataset:
    return ds.subset(np.flatnonzero(np.asarray(keep)))


def validation_sets(root: Path) -> dict[str, list[ImageDataset]]:
    cxr = load_dataset(root / "chest_xray_pneumonia", split="train")
    medpix = load_dataset(root / "medpix2", split="val")
    cifar = load_dataset(root / "natural" / "cifar10_test_first846.npz")
    return {"chest x-ray": [_where(cxr, [in_val(cxr_patient(it)) for it in cxr.items]),
                            load_dataset(root / "medmnist" / "pneumoniamnist.npz", split="val"),
                            part_dataset(root, "cxr_covid_radiography_adult", "val")],
            "CT": [_where(medpix, medpix.labels[:, medpix.classnames.index("CT")] == 1)],
            "MR": [_where(medpix, medpix.labels[:, medpix.classnames.index("MR")] == 1),
                   part_dataset(root, "brain_tumor_mri", "val")],
            "fundus photograph": [load_dataset(root / "medmnist" / "retinamnist.npz", split="val"),
                                  part_dataset(root, "fundus_eye_diseases", "val")],
            "ultrasound": [part_dataset(root, "busi_breast_ultrasound", "val")],  # BreastMNIST is BUSI at 28 px
            "histopathology": [part_dataset(root, "lung_histopathology_lc25000", "val")],
            "photo": [load_dataset(root / "natural" / "hymenoptera", split="val"),
                      cifar.subset(np.arange(500, 600))]}


def test_sets(root: Path) -> dict[str, tuple[str, ImageDataset]]:
    """name -> (its modality, the data)."""
    medpix = load_dataset(root / "medpix2", split="test")
    cifar = load_dataset(root / "natural" / "cifar10_test_first846.npz")
    mnist = root / "medmnist"
    return {"Kermany test": ("chest x-ray", load_dataset(root / "chest_xray_pneumonia", split="test")),
            "PneumoniaMNIST test": ("chest x-ray", load_dataset(mnist / "pneumoniamnist.npz", split="test")),
            "adult films (COVID-19 Radiography, test part)": ("chest x-ray", part_dataset(
                root, "cxr_covid_radiography_adult", "test")),
            "MedPix test CT": ("CT", _where(medpix, medpix.labels[:, medpix.classnames.index("CT")] == 1)),
            "MedPix test MR": ("MR", _where(medpix, medpix.labels[:, medpix.classnames.index("MR")] == 1)),
            "brain MRI test part": ("MR", part_dataset(root, "brain_tumor_mri", "test")),
            "RetinaMNIST test": ("fundus photograph", load_dataset(mnist / "retinamnist.npz", split="test")),
            "fundus photographs test part": ("fundus photograph", part_dataset(root, "fundus_eye_diseases", "test")),
            "BreastMNIST test (BUSI at 28 px: seen in part)": ("ultrasound", load_dataset(mnist / "breastmnist.npz",
                                                                                           split="test")),
            "BUSI test part": ("ultrasound", part_dataset(root, "busi_breast_ultrasound", "test")),
            "LC25000 test part": ("histopathology", part_dataset(root, "lung_histopathology_lc25000", "test")),
            "CIFAR-10 600-845": ("photo", cifar.subset(np.arange(600, 846)))}


def modality_probs(model, ds: ImageDataset, vectors) -> tuple[np.ndarray, list[str]]:
    emb = embed_images(model, ds, num_workers=2, progress=False, on_error="skip")
    ans = answer(emb.vectors, vectors, model.logit_scale)
    return ans.probs, ans.classnames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--write", action="store_true", help="store the thresholds in lite's shipped config")
    args = ap.parse_args()
    root = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    model = create_model(args.model)
    vectors = domain_vectors(model, cache=True)
    val_probs, kinds = [], []
    for kind, sets in validation_sets(root).items():
        for ds in sets:
            probs, classes = modality_probs(model, ds, vectors)
            val_probs.append(probs)
            kinds += [kind] * len(probs)
    val, kinds = np.concatenate(val_probs), np.asarray(kinds)
    thresholds = {}
    for c, name in enumerate(classes):
        if (kinds == name).any():
            thresholds[name] = round(balanced_threshold(val[:, c], kinds == name), 4)
            acc = 0.5 * (np.mean(val[kinds == name, c] >= thresholds[name])
                         + np.mean(val[kinds != name, c] < thresholds[name]))
            print(f"{name}: threshold {thresholds[name]:.4f} (validation balanced accuracy {acc:.3f}, "
                  f"{int((kinds == name).sum())} in / {int((kinds != name).sum())} out)")
    report = {"thresholds": thresholds, "test": {}}
    for name, (kind, ds) in test_sets(root).items():
        probs, classes = modality_probs(model, ds, vectors)
        row = {}
        for c, domain in enumerate(classes):
            accepted = probs[:, c] >= thresholds[domain] if domain in thresholds else probs.argmax(1) == c
            row[domain] = round(float(accepted.mean()), 4)
        report["test"][name] = {"modality": kind, "n": len(probs), "accepted_as": row}
        print(f"{name} ({kind}, n={len(probs)}): " + ", ".join(f"{d} {v:.3f}" for d, v in row.items()))
    print(json.dumps(report, indent=1))
    if args.write:
        cfg_path = Path(__file__).resolve().parents[1] / "src/medvlkit/models/weights/lite_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["domain_thresholds"], cfg["scope"] = thresholds, LITE_SCOPE
        cfg_path.write_text(json.dumps(cfg, indent=1) + "\n")
        print(f"wrote the thresholds and the scope into {cfg_path}")


if __name__ == "__main__":
    main()
