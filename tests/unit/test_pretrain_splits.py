"""The parts lite v2 was trained, validated and tested on (:mod:`medvlkit.tasks.pretrain.splits`): a family of
copies never straddles two parts, label conflicts and the audit's exclusions are dropped, a public test split stays
whole, and the result does not depend on file order."""

from pathlib import Path

import numpy as np

from helpers import make_image
from medvlkit.data.dataset import ImageDataset
from medvlkit.tasks.pretrain.splits import Groups, assign_parts, part_of, read_splits, write_splits


def _dataset(root, names, labels, classes=("a", "b")):
    items = [str(root / n) for n in names]
    onehot = np.eye(len(classes), dtype=np.float32)[labels]
    return ImageDataset(items, "synthetic", list(classes), onehot)


def test_families_share_a_part_and_conflicts_and_exclusions_go(tmp_path):
    names = [f"s/img{i:03d}.png" for i in range(300)]
    labels = [i % 2 for i in range(300)]
    ds = _dataset(tmp_path, names, labels)
    fam = {str((tmp_path / n).resolve()): "img000.png" for n in names[:40]}  # one family of 40 copies
    fam |= {str((tmp_path / n).resolve()): "img100.png" for n in names[100:103]}  # a family with two labels
    groups = Groups(fam, {"img100.png"}, {str((tmp_path / names[200]).resolve())})
    rows = assign_parts(ds, ["all"] * 300, groups, tmp_path, official_test=False)
    parts = {f: p for f, _, p in rows}
    assert len({parts[n] for n in names[:40]}) == 1
    assert not {names[100], names[101], names[102], names[200]} & set(parts)
    counts = {p: sum(v == p for v in parts.values()) for p in ("train", "val", "test")}
    assert counts["test"] > 40 and counts["val"] > 5 and counts["train"] > 100  # 30 / 10 / 60 by family hash
    shuffled = _dataset(tmp_path, names[::-1], labels[::-1])
    assert assign_parts(shuffled, ["all"] * 300, groups, tmp_path, official_test=False) == rows


def test_public_test_split_stays_whole(tmp_path):
    names = [f"train/x{i}.png" for i in range(50)] + [f"test/y{i}.png" for i in range(20)]
    ds = _dataset(tmp_path, names, [0] * 70)
    rows = assign_parts(ds, ["train"] * 50 + ["test"] * 20, Groups({}, set(), set()), tmp_path, official_test=True)
    assert sorted(f for f, _, p in rows if p == "test") == sorted(names[50:])
    assert {p for f, _, p in rows if f.startswith("train/")} == {"train", "val"}
    assert part_of("x.png") == part_of("x.png")


def test_split_file_round_trips_byte_for_byte(tmp_path):
    rows = [("a/1.png", "x", "train"), ("a/2.png", "y", "test")]
    write_splits(rows, tmp_path / "one.csv.gz")
    write_splits(rows, tmp_path / "two.csv.gz")
    assert read_splits(tmp_path / "one.csv.gz") == rows
    assert (tmp_path / "one.csv.gz").read_bytes() == (tmp_path / "two.csv.gz").read_bytes()


def test_part_csvs_and_the_set_csv_with_a_split_column_hold_the_same_rows(tmp_path):
    """Each part as its own CSV, and the set in one CSV whose split column is the part (what probe and adapt read
    to train on one part and score another)."""
    import csv

    from medvlkit.engine.options import DataOptions
    from medvlkit.tasks.pretrain.splits import write_part_csvs

    rows = [("busi_breast_ultrasound/benign/a.png", "benign", "train"),
            ("busi_breast_ultrasound/malignant/b.png", "malignant", "test"),
            ("busi_breast_ultrasound/benign/c.png", "benign", "val"),
            ("busi_breast_ultrasound/malignant/d.png", "malignant", "train")]
    for f, _, _ in rows:
        make_image(tmp_path / "data" / f)
    written = write_part_csvs(rows, tmp_path / "data", tmp_path / "out")
    assert sorted(p.name for p in written) == ["busi_breast_ultrasound-test.csv", "busi_breast_ultrasound-train.csv",
                                               "busi_breast_ultrasound-val.csv", "busi_breast_ultrasound.csv"]
    with open(tmp_path / "out" / "busi_breast_ultrasound.csv", newline="") as f:
        every = [(Path(r["path"]).name, r["label"], r["split"]) for r in csv.DictReader(f)]
    assert sorted(every) == sorted((Path(f).name, label, part) for f, label, part in rows)
    for part in ("train", "val", "test"):
        a = DataOptions().load(str(tmp_path / "out" / "busi_breast_ultrasound.csv"), part)
        b = DataOptions().load(str(tmp_path / "out" / f"busi_breast_ultrasound-{part}.csv"))
        assert a.items == b.items
        def names(ds):
            return [ds.classnames[i] for i in ds.label_matrix.argmax(1)]

        assert names(a) == names(b)
