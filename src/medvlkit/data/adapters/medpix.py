"""MedPix-2.0 (Siragusa et al. 2025): ``descriptions_{train,dev,test}.jsonl`` + ``images/``, one radiology caption
per image, labelled by modality (CT or MR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvlkit.data.adapters.captions import read_jsonl
from medvlkit.data.dataset import ImageDataset, one_hot, register_adapter
from medvlkit.errors import MedvlkitError

_MEDPIX_SPLITS = {"train": "train", "val": "dev", "valid": "dev", "validation": "dev", "dev": "dev", "test": "test"}


def _detect_medpix(path: Path) -> bool:
    return path.is_dir() and (path / "descriptions_test.jsonl").is_file() and (path / "images").is_dir()


@register_adapter("medpix", "MedPix-2.0 folder: descriptions_{train,dev,test}.jsonl + images/; captions and "
                  "CT/MR labels", _detect_medpix, priority=20)  # before folder: a folder with MedPix's files
def load_medpix(path: Path, split: str | None = None) -> ImageDataset:
    """MedPix-2.0: one caption per image; labels are the modality type (CT or MR)."""
    if not split:
        raise MedvlkitError(f"--data {path} is MedPix-2.0 with splits train, dev (val), test: pass --split")
    name = _MEDPIX_SPLITS.get(split.lower())
    if name is None:
        raise MedvlkitError(f"--split {split}: MedPix-2.0 splits are train, val (dev), test")
    rows = read_jsonl(path / f"descriptions_{name}.jsonl")
    items = [str((path / "images" / f"{r['image']}.jpg").resolve()) for r in rows]
    texts = [(r.get("Description") or {}).get("Caption") or "" for r in rows]
    classes = sorted({r["Type"] for r in rows})
    labels = one_hot(np.array([classes.index(r["Type"]) for r in rows]), len(classes))
    desc = [r.get("Description") or {} for r in rows]
    attributes = {"location_category": [_text(r.get("Location Category")) for r in rows],
                  "age": [_text(d.get("Age")) for d in desc], "sex": [_text(d.get("Sex")) for d in desc],
                  "plane": [_text(d.get("Plane")) for d in desc], "modality": [_text(d.get("Modality")) for d in desc]}
    return ImageDataset(items=items, name="medpix2", classnames=classes, labels=labels, texts=texts,
                        split=split, attributes=attributes)


def _text(value) -> str | None:
    """A metadata value as text; None where MedPix leaves it empty or writes N/A."""
    text = "" if value is None else str(value).strip()
    return None if text.lower() in ("", "n/a", "na", "unknown") else text
