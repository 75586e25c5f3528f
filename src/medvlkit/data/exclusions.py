"""Images an audit says to leave out (``--exclude AUDIT_DIR``): the train / val side of every cross-split duplicate
and of every patient found in two splits (``medvlkit audit``; never a test image). Read here, in the data layer, so
every verb that reads data through :class:`medvlkit.engine.options.DataOptions` drops them the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)
AUDIT_FILE = "audit.json"


@dataclass(frozen=True)
class Exclusions:
    """The files an audit excludes, and which audit it was (its folder and identity sha256)."""

    files: frozenset[str]
    folder: str
    identity: str


def read_exclusions(folder: str | Path) -> Exclusions:
    """The exclusion list of an audit folder, checked.

    Raises:
        MedvlkitError: no audit there, or a damaged one.
    """
    from medvlkit.artifacts import json_field, read_json_object

    path = Path(folder) / AUDIT_FILE
    if not path.is_file():
        raise MedvlkitError(f"--exclude {folder}: no {AUDIT_FILE} there (write one with `medvlkit audit --out DIR`)")
    audit = read_json_object(path, "audit")
    entries = json_field(audit, "exclude", list, path, "audit")
    if not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in entries):
        raise MedvlkitError(f"{path}: not a valid audit ('exclude' must list objects with a 'file')")
    identity = (audit.get("identity") or {}).get("sha256", "") if isinstance(audit.get("identity"), dict) else ""
    return Exclusions(frozenset(e["file"] for e in entries), str(Path(folder).resolve()), identity)


def apply_exclusions(dataset: ImageDataset, exclusions: Exclusions) -> ImageDataset:
    """The dataset without the excluded files; ``meta["audit"]`` records the audit and how many were left out."""
    keep = np.array([item not in exclusions.files for item in dataset.items], dtype=bool)
    out = dataset.subset(np.flatnonzero(keep)) if not keep.all() else dataset
    n = int((~keep).sum())
    if n:
        logger.warning("%s: %d image(s) left out as the audit %s says (duplicates of, or patients in, another "
                       "split)", dataset.full_name, n, exclusions.folder)
    out.meta = dict(out.meta) | {"audit": {"applied": True, "folder": exclusions.folder,
                                           "identity": exclusions.identity, "n_excluded": n}}
    return out
