"""MedMNIST ``.npz`` files (``<split>_images`` / ``<split>_labels``) and plain ``images``/``labels`` npz files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset, one_hot, register_adapter
from medvlkit.data.io import npz_array_shape, read_npz_array
from medvlkit.data.items import npz_item
from medvlkit.errors import MedvlkitError

# Label names from MedMNIST v2's INFO table (medmnist/info.py), keyed by file stem.
MEDMNIST_CLASSES: dict[str, list[str]] = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
    # DeepDRiD's grades 0-4 on the international clinical DR scale (MedMNIST's table names them "0".."4")
    "retinamnist": ["no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
                    "severe diabetic retinopathy", "proliferative diabetic retinopathy"],
    "chestmnist": ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"],
}
# What kind of image each MedMNIST file holds (a class of the ``modality`` prompt set where there is one).
MEDMNIST_DOMAINS: dict[str, str] = {
    "pneumoniamnist": "chest x-ray", "chestmnist": "chest x-ray", "breastmnist": "ultrasound",
    "retinamnist": "fundus photograph", "dermamnist": "dermatoscopy", "octmnist": "optical coherence tomography",
    "bloodmnist": "microscopy",
}
MAX_UNNAMED_CLASSES = 10_000


def medmnist_stem(path: Path) -> str:
    """The MedMNIST name of a file: its stem without the size suffix of MedMNIST+ (``breastmnist_224.npz`` ->
    ``breastmnist``)."""
    return re.sub(r"_(28|64|128|224)$", "", path.stem.lower())
_SPLITS = {"val": "val", "valid": "val", "validation": "val", "dev": "val", "train": "train", "test": "test"}


def _detect(path: Path) -> bool:
    return path.is_file() and path.suffix == ".npz"


@register_adapter("medmnist", "MedMNIST .npz (<split>_images/<split>_labels, optional label_names) or an npz "
                  "with images, labels, label_names", _detect, priority=10)
def load_npz(path: Path, split: str | None = None) -> ImageDataset:
    """Load one split of a MedMNIST file (or a whole plain images/labels npz).

    Array headers are checked before anything is decompressed (no pickles, no oversized or bomb arrays); the image
    array is not read here at all. Labels must be class indices ``0..C-1`` (or a 0/1 matrix for multi-label data).
    """
    keys = _npz_keys(path)
    if "images" in keys:
        key, label_key = "images", "labels" if "labels" in keys else None
    else:
        if not split:
            splits = sorted(k[:-7] for k in keys if k.endswith("_images"))
            if not splits:
                raise MedvlkitError(f"--data {path}: no 'images' or '<split>_images' array (arrays: "
                                    f"{', '.join(sorted(keys)) or 'none'})")
            raise MedvlkitError(f"--data {path} has splits {splits}: pass --split")
        key = f"{_SPLITS.get(split.lower(), split)}_images"
        if key not in keys:
            raise MedvlkitError(f"--data {path} has no '{split}' split (arrays: {', '.join(sorted(keys))})")
        label_key = key.replace("_images", "_labels")
        label_key = label_key if label_key in keys else None
    names = [str(n) for n in read_npz_array(path, "label_names")] if "label_names" in keys else None
    shape, dtype = npz_array_shape(path, key)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))) or shape[0] == 0 or \
            not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise MedvlkitError(f"--data {path}: '{key}' has shape {shape} of {dtype}; images must be a non-empty "
                            "(N, H, W) or (N, H, W, 1|3) numeric array")
    n = shape[0]
    items = [npz_item(str(path.resolve()), key, i) for i in range(n)]
    domain = MEDMNIST_DOMAINS.get(medmnist_stem(path))
    meta = {"domain": domain} if domain else {}
    if label_key is None:
        return ImageDataset(items=items, name=path.stem, split=split, meta=meta)
    ds = _labelled(path, items, read_npz_array(path, label_key), label_key, names, split)
    ds.meta |= meta
    return ds


def _npz_keys(path: Path) -> set[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as err:
        raise MedvlkitError(f"--data {path} is not a readable .npz file ({err})") from None


def _labelled(path: Path, items: list[str], labels: np.ndarray, label_key: str, names: list[str] | None,
              split: str | None) -> ImageDataset:
    n = len(items)
    labels = np.asarray(labels)
    if labels.shape[:1] != (n,) or labels.ndim > 2 or not np.issubdtype(labels.dtype, np.number):
        raise MedvlkitError(f"--data {path}: '{label_key}' has shape {labels.shape} of {labels.dtype} for {n} "
                            "images; labels need one numeric row per image")
    if labels.ndim == 2 and labels.shape[1] > 1:  # ChestMNIST: multi-label 0/1 matrix
        names = names or MEDMNIST_CLASSES.get(medmnist_stem(path)) or [str(c) for c in range(labels.shape[1])]
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise MedvlkitError(f"--data {path}: multi-label '{label_key}' holds {labels[row, col]} at row {row}, "
                                f"column {col}; it must be 0 or 1")
        if len(names) != labels.shape[1]:
            raise MedvlkitError(f"--data {path}: {len(names)} label names for {labels.shape[1]} label columns")
        return ImageDataset(items=items, name=path.stem, classnames=names, labels=labels.astype(np.float32),
                            multilabel=True, split=split)
    flat = labels.reshape(-1)
    if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)) or flat.min() < 0:
        row = int(np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)) | (flat < 0))[0])
        raise MedvlkitError(f"--data {path}: '{label_key}' holds {flat[row]} at row {row}; single labels must be "
                            "class indices 0, 1, ... (an unknown label cannot be scored: drop the row)")
    flat = flat.astype(np.int64)
    if not names and not MEDMNIST_CLASSES.get(medmnist_stem(path)) and flat.max() >= MAX_UNNAMED_CLASSES:
        raise MedvlkitError(f"--data {path}: '{label_key}' holds class index {flat.max()}; without a 'label_names' "
                            f"array labels must be 0..C-1 with C <= {MAX_UNNAMED_CLASSES}. Add label_names")
    names = names or MEDMNIST_CLASSES.get(medmnist_stem(path)) or [str(c) for c in range(int(flat.max()) + 1)]
    if flat.max() >= len(names):
        raise MedvlkitError(f"--data {path}: '{label_key}' holds class {flat.max()} but there are only "
                            f"{len(names)} label names ({', '.join(names)})")
    return ImageDataset(items=items, name=path.stem, classnames=names, labels=one_hot(flat, len(names)), split=split)
