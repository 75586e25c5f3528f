"""MedMNIST ``.npz`` files (``<split>_images`` / ``<split>_labels``) and plain ``images``/``labels`` npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset, one_hot, register_adapter
from medvlkit.errors import MedvlkitError

# Label names from MedMNIST v2's INFO table (medmnist/info.py), keyed by file stem.
MEDMNIST_CLASSES: dict[str, list[str]] = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "chestmnist": ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"],
}
_SPLITS = {"val": "val", "valid": "val", "validation": "val", "dev": "val", "train": "train", "test": "test"}


def _detect(path: Path) -> bool:
    return path.is_file() and path.suffix == ".npz"


@register_adapter("medmnist", "MedMNIST .npz (<split>_images/<split>_labels) or an npz with images, labels, "
                  "label_names", _detect)
def load_npz(path: Path, split: str | None = None, **_: object) -> ImageDataset:
    """Load one split of a MedMNIST file (or a whole plain images/labels npz)."""
    with np.load(path) as z:
        keys = set(z.files)
        if "images" in keys:
            key, labels = "images", z["labels"] if "labels" in keys else None
            names = [str(n) for n in z["label_names"]] if "label_names" in keys else None
        else:
            if not split:
                splits = sorted(k[:-7] for k in keys if k.endswith("_images"))
                raise MedvlkitError(f"--data {path} has splits {splits}: pass --split")
            key = f"{_SPLITS.get(split.lower(), split)}_images"
            if key not in keys:
                raise MedvlkitError(f"--data {path} has no '{split}' split (arrays: {', '.join(sorted(keys))})")
            labels, names = z[key.replace("_images", "_labels")], None
        n = z[key].shape[0]
    items = [f"{path.resolve()}::{key}[{i}]" for i in range(n)]
    if labels is None:
        return ImageDataset(items=items, name=path.stem, split=split)
    labels = np.asarray(labels)
    names = names or MEDMNIST_CLASSES.get(path.stem) or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.ndim == 2 and labels.shape[1] > 1:  # ChestMNIST: multi-label 0/1 matrix
        return ImageDataset(items=items, name=path.stem, classnames=names, labels=labels.astype(np.float32),
                            multilabel=True, split=split)
    return ImageDataset(items=items, name=path.stem, classnames=names,
                        labels=one_hot(labels.reshape(-1).astype(int), len(names)), split=split)
