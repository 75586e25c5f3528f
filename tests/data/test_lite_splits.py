"""The shipped split list of lite v2 (``lite_splits.csv.gz``) on the real data: rebuilt from the audit it equals the
shipped one, no family of copies crosses parts, and the brain-MRI test part is the public test split."""

from pathlib import Path

import pytest

from medvlkit.models.lite import shipped_weights_dir
from medvlkit.tasks.pretrain.splits import SETS, SPLITS_FILE, assign_parts, audit_groups, read_splits

pytestmark = pytest.mark.data


def test_busi_parts_rebuild_from_the_audit_and_keep_lesions_together(data_root):
    from medvlkit.engine.options import DataOptions
    from medvlkit.tasks.dataaudit.run import combine, load_splits

    name = "busi_breast_ultrasound"
    shipped = [r for r in read_splits(shipped_weights_dir() / SPLITS_FILE) if r[0].startswith(name + "/")]
    groups = audit_groups(data_root / name, augmented=False)  # what set_parts does, with the groups kept
    ds, split_of = combine(load_splits(str(data_root / name), DataOptions()))
    assert assign_parts(ds, split_of, groups, data_root, official_test=False) == shipped
    part = {str((data_root / f).resolve()): p for f, _, p in shipped}
    by_family: dict[str, set[str]] = {}
    for path, p in part.items():
        by_family.setdefault(groups.family(path), set()).add(p)
    assert len(groups.family_of) > 100  # repeated scans of one lesion exist...
    assert all(len(parts) == 1 for parts in by_family.values())  # ...and none straddles two parts


def test_every_set_is_split_and_the_brain_test_part_is_the_public_test_split(data_root):
    rows = read_splits(shipped_weights_dir() / SPLITS_FILE)
    for name in SETS:
        parts = {p for f, _, p in rows if f.startswith(name + "/")}
        assert parts == {"train", "val", "test"}, name
    for f, label, _ in rows:
        assert (data_root / f).is_file() and Path(f).parent.name == label  # labels are the class folders
    test = {f for f, _, p in rows if f.startswith("brain_tumor_mri/") and p == "test"}
    public = {str(p.relative_to(data_root)) for p in (data_root / "brain_tumor_mri" / "test").rglob("*.jpg")}
    assert test <= public and len(public - test) == 2  # one slice filed under two labels, both copies dropped
