"""Leak-safe train / val / test parts of the five sets added to ``lite``'s pretraining in v2, decided by the audit.

Each set is audited (:mod:`medvlkit.tasks.dataaudit`: exact, near-duplicate and, for LC25000, rotated / flipped
copies) and its images grouped into families (a copy of a copy is in its original's family). A family never
straddles two parts:

- ``brain_tumor_mri``: the public split's ``test`` stays the test part, whole; train images with a copy in test are
  dropped (the audit's exclusion list: 480 images); the rest of train splits by family into train and val;
- ``busi_breast_ultrasound`` (families: repeated scans of one lesion), ``lung_histopathology_lc25000`` (families:
  augmented copies of one original tile), ``fundus_eye_diseases`` and ``cxr_covid_radiography_adult``: no public
  split; each family goes to test (30%), val (10%) or train (60%) by a hash of its first file's name;
- images of a family under two labels (BUSI: a benign scan that is also filed as malignant) are dropped everywhere.

The result is shipped as ``lite_splits.csv.gz`` beside ``lite``'s heads (file relative to the data root, label,
part), so training and the model card's test numbers read one list; ``python -m medvlkit.tasks.pretrain.splits
--data-root ../shared/data --out DIR`` rebuilds it (byte for byte; 4 minutes on 2 cores) and writes one CSV per set
and part that every verb reads (``medvlkit zeroshot --data DIR/busi_breast_ultrasound-test.csv``), and one per set
with every part in a ``split`` column for the verbs that train on one part and score another (``medvlkit probe|adapt
--data DIR/busi_breast_ultrasound.csv``); with ``--shipped`` it writes those CSVs from the shipped list at once.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medvlkit.errors import MedvlkitError

if TYPE_CHECKING:
    from medvlkit.data.dataset import ImageDataset

SETS = {"brain_tumor_mri": {"official_test": True}, "busi_breast_ultrasound": {},
        "lung_histopathology_lc25000": {"augmented": True}, "fundus_eye_diseases": {},
        "cxr_covid_radiography_adult": {}}
"""The sets, with how each is split (see the module docstring)."""
TEST_FRACTION, VAL_FRACTION = 0.30, 0.10
PARTS = ("train", "val", "test")
SPLITS_FILE = "lite_splits.csv.gz"


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) from a string (independent of file order and of the machine)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0x100000000


def part_of(key: str, allow_test: bool = True) -> str:
    """``test``, ``val`` or ``train`` for a family key: 30 / 10 / 60% (without test: val 1/7 of it, as 10 of 70)."""
    u = _unit(key)
    if allow_test:
        return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"
    return "val" if u < VAL_FRACTION / (1 - TEST_FRACTION) else "train"


@dataclass
class Groups:
    """What the audit of one set decides: each image's family key (absolute path -> the family's first file name;
    images in no family are their own), the families holding a label conflict, the images its exclusion list drops."""

    family_of: dict[str, str]
    conflicted: set[str]
    excluded: set[str]

    def family(self, path: str) -> str:
        return self.family_of.get(path, Path(path).name)


def _absolute(f: str) -> str:
    return str(Path(f).resolve())


def audit_groups(folder: Path, augmented: bool, progress: bool = False) -> Groups:
    """Audit ``folder`` (:func:`~medvlkit.tasks.dataaudit.run.run_audit`, no model) and read its families."""
    from medvlkit.engine.options import RunOptions
    from medvlkit.tasks.dataaudit import AuditConfig, run_audit

    with tempfile.TemporaryDirectory() as tmp:
        audit = run_audit(AuditConfig(str(folder), augmented=augmented, bootstrap=100), Path(tmp),
                          run=RunOptions(device="cpu", progress=progress, cache=False))
    family_of: dict[str, str] = {}
    for fam in audit["families"]:
        files = sorted(_absolute(f) for fs in fam["splits"].values() for f in fs)
        family_of.update((f, Path(files[0]).name) for f in files)
    groups = Groups(family_of, set(), {_absolute(row["file"]) for row in audit["exclude"]})
    groups.conflicted = {groups.family(_absolute(p[k])) for p in audit["pairs"] if p["label_conflict"]
                         for k in ("file_a", "file_b")}
    return groups


def assign_parts(ds: ImageDataset, split_of: list[str], groups: Groups, data_root: Path,
                 official_test: bool) -> list[tuple[str, str, str]]:
    """(file relative to ``data_root``, label, part) for every image kept, sorted by file: a family's images share
    one part; with ``official_test`` the public test split stays test and the rest is train / val."""
    root = str(data_root.resolve()) + "/"
    rows = []
    for i, item in enumerate(ds.items):
        path = _absolute(item)
        family = groups.family(path)
        if path in groups.excluded or family in groups.conflicted:
            continue
        if not path.startswith(root):
            raise MedvlkitError(f"{item}: outside the data root {root}")
        part = ("test" if split_of[i] == "test" else part_of(family, allow_test=False)) if official_test \
            else part_of(family)
        rows.append((path[len(root):], ds.classnames[int(ds.label_matrix[i].argmax())], part))
    return sorted(rows)


def set_parts(data_root: Path, name: str, progress: bool = False) -> list[tuple[str, str, str]]:
    """(file relative to ``data_root``, label, part) for every image of set ``name`` kept, sorted by file."""
    from medvlkit.engine.options import DataOptions
    from medvlkit.tasks.dataaudit.run import combine, load_splits

    how = SETS[name]
    folder = Path(data_root) / name
    if not folder.is_dir():
        raise MedvlkitError(f"{folder}: not found; pass --data-root the medvlkit data folder")
    groups = audit_groups(folder, bool(how.get("augmented")), progress)
    ds, split_of = combine(load_splits(str(folder), DataOptions()))
    return assign_parts(ds, split_of, groups, Path(data_root), bool(how.get("official_test")))


def build_splits(data_root: Path, progress: bool = False) -> list[tuple[str, str, str]]:
    """Every set's rows (see :func:`set_parts`)."""
    return [row for name in SETS for row in set_parts(Path(data_root), name, progress)]


def write_splits(rows: list[tuple[str, str, str]], path: Path) -> None:
    """The gzip'd CSV (no timestamp in the gzip header: the same rows give the same bytes)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["file", "label", "part"])
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.getvalue().encode())


def read_splits(path: Path) -> list[tuple[str, str, str]]:
    """Rows written by :func:`write_splits`."""
    with gzip.open(path, "rt", newline="") as f:
        return [(r["file"], r["label"], r["part"]) for r in csv.DictReader(f)]


def shipped_splits() -> list[tuple[str, str, str]]:
    """The rows of the list shipped beside lite's heads (``models/weights/lite_splits.csv.gz``)."""
    from medvlkit.models.lite import shipped_weights_dir

    return read_splits(shipped_weights_dir() / SPLITS_FILE)


def rows_of(rows: list[tuple[str, str, str]], name: str, part: str) -> list[tuple[str, str]]:
    """(file relative to the data root, label) of set ``name`` in ``part``."""
    return [(f, label) for f, label, p in rows if p == part and f.startswith(name + "/")]


def write_part_csvs(rows: list[tuple[str, str, str]], data_root: Path, out: Path) -> list[Path]:
    """``out/<set>-<part>.csv`` (``path,label``, absolute paths) for every set and part, and ``out/<set>.csv``
    (``path,label,split``: every part, the part as the split): data any verb reads."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SETS:
        every = []
        for part in PARTS:
            chosen = [(str((data_root / f).resolve()), label) for f, label in rows_of(rows, name, part)]
            if not chosen:
                continue
            written.append(_write_csv(out / f"{name}-{part}.csv", ["path", "label"], chosen))
            every += [(path, label, part) for path, label in chosen]
        if every:
            written.append(_write_csv(out / f"{name}.csv", ["path", "label", "split"], every))
    return written


def _write_csv(path: Path, header: list[str], rows: Sequence[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def part_dataset(data_root: Path, name: str, part: str) -> ImageDataset:
    """The ``part`` of set ``name`` in the shipped list, as a dataset (labels: the class folders)."""
    from medvlkit.data.dataset import ImageDataset

    rows = [(str((Path(data_root) / f).resolve()), label) for f, label in rows_of(shipped_splits(), name, part)]
    if not rows:
        raise MedvlkitError(f"no {part} part of {name} in the shipped {SPLITS_FILE}")
    classes = sorted({label for _, label in rows})
    labels = np.eye(len(classes), dtype=np.float32)[[classes.index(label) for _, label in rows]]
    return ImageDataset([f for f, _ in rows], f"{name}-{part}", classes, labels)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for lite_splits.csv.gz and the per-part CSVs")
    ap.add_argument("--shipped", action="store_true", help="write the per-part CSVs of the shipped list (no audit)")
    args = ap.parse_args(argv)
    if args.shipped:
        rows = shipped_splits()
    else:
        rows = build_splits(args.data_root, progress=True)
        write_splits(rows, args.out / SPLITS_FILE)
    for path in write_part_csvs(rows, args.data_root, args.out):
        print(path)


if __name__ == "__main__":
    main()
