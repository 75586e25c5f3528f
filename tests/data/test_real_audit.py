"""`medvlkit audit` on the real sets of $MEDVLKIT_DATA: the counts it finds, pinned (each set's README says what is
there; benchmarks/audit_real.py measured and eyeballed these). A change in any of them is a change in what the audit
tells a user about their data: look at the pairs (`medvlkit report`) before updating a number here."""

import json
from pathlib import Path

import pytest

from medvlkit.apps.cli import main

pytestmark = pytest.mark.data


def _audit(data: Path, out: Path, *flags: str) -> dict:
    assert main(["audit", "--data", str(data), "--out", str(out), "-q", "--workers", "2", "--bootstrap", "200",
                 "--cache-dir", str(out.parent / "cache"), *flags]) == 0
    return json.loads((out / "audit.json").read_text())


def _names(pair: dict) -> set[str]:
    return {Path(pair["file_a"]).name, Path(pair["file_b"]).name}


def test_brain_mri_public_split_leaks(data_root, tmp_path):
    """The public train/test split of the brain MRI set holds the same slices on both sides (flipped, turned,
    re-encoded), and one slice under two labels."""
    audit = _audit(data_root / "brain_tumor_mri", tmp_path / "brain")
    s = audit["summary"]
    assert (s["exact_pairs"], s["near_pairs"], s["cross_split_pairs"], s["within_split_pairs"]) == (0, 3431, 1705, 1726)
    assert (s["families"], s["images_in_families"], s["excluded_images"], s["plain_pairs"]) == (471, 1403, 480, 0)
    conflicts = [p for p in audit["pairs"] if p["label_conflict"]]
    assert len(conflicts) == 1 and _names(conflicts[0]) == {"Te-me_0156.jpg", "Te-piTr_0002.jpg"}
    assert {p["split_a"] for p in conflicts} == {"test"}
    cross_test = {p["file_b"] if p["split_b"] == "test" else p["file_a"] for p in audit["pairs"] if p["cross_split"]}
    assert len(cross_test) == 474
    assert all("/train/" in e["file"] for e in audit["exclude"])
    # file names give the split away (Tr-/Te- prefixes): the name-pattern shortcut is perfect
    assert audit["shortcuts"]["file_name_pattern"]["glioma"]["auroc"] > 0.999
    assert s["shortcut_flagged"] == 4


def test_lc25000_augmented_families(data_root, tmp_path):
    """LC25000 was made by rotating and flipping originals: --augmented finds those copies as families."""
    audit = _audit(data_root / "lung_histopathology_lc25000", tmp_path / "lc", "--augmented")
    s = audit["summary"]
    assert (s["near_pairs"], s["augmented_pairs"], s["families"], s["images_in_families"]) == (28, 479, 238, 600)
    assert s["label_conflicts"] == 0 and s["cross_split_pairs"] == 0  # no split: nothing to exclude
    assert s["excluded_images"] == 0


def test_fundus_plain_discs_are_not_counted_as_copies(data_root, tmp_path):
    """Blurred cataract discs look alike without being the same picture: listed as too plain, not counted; the
    copies that remain include the same eye filed under two diseases."""
    audit = _audit(data_root / "fundus_eye_diseases", tmp_path / "fundus")
    s = audit["summary"]
    assert (s["near_pairs"], s["label_conflicts"], s["plain_pairs"]) == (94, 7, 158)
    conflicts = [p for p in audit["pairs"] if p["label_conflict"]]
    assert {(p["label_a"], p["label_b"]) for p in conflicts} == {("cataract", "glaucoma")}
    assert {"cataract_073.png", "Glaucoma_062.png"} in [_names(p) for p in conflicts]
    plain = audit["plain_pairs"]
    assert all(p["kind"] == "plain" for p in plain) and not any(p in audit["pairs"] for p in plain)


def test_busi_repeated_scans(data_root, tmp_path):
    audit = _audit(data_root / "busi_breast_ultrasound", tmp_path / "busi")
    s = audit["summary"]
    assert (s["exact_pairs"], s["near_pairs"], s["label_conflicts"], s["families"]) == (0, 108, 4, 77)


def test_adult_chest_films_class_follows_the_hospital(data_root, tmp_path):
    """covid (BIMCV) vs normal (NIH/RSNA): image properties alone separate the classes; the file names do perfectly."""
    audit = _audit(data_root / "cxr_covid_radiography_adult", tmp_path / "covid")
    shortcuts = audit["shortcuts"]
    assert shortcuts["image_properties"]["covid"]["auroc"] == pytest.approx(0.8656, abs=1e-4)
    assert shortcuts["file_name_pattern"]["covid"]["auroc"] == 1.0
    assert shortcuts["flagged"] == ["covid", "normal"] and audit["summary"]["near_pairs"] == 0


def test_kermany_patients_do_not_cross_the_split(data_root):
    """Kermany's person numbers count per pneumonia subtype: grouped by number alone, 170 "patients" are in train
    and test (each a bacterial number beside a viral one); by number and subtype, none."""
    from medvlkit.engine.options import DataOptions
    from medvlkit.tasks.dataaudit.run import combine, group_leaks, load_splits

    ds, split_of = combine(load_splits(str(data_root / "chest_xray_pneumonia"), DataOptions()))
    assert len(group_leaks(ds, split_of, r"(person\d+_(?:bacteria|virus)|NORMAL2-IM-\d+|IM-\d+)")) == 0
    naive = group_leaks(ds, split_of, r"(person\d+|NORMAL2-IM-\d+|IM-\d+)")
    assert len(naive) == 170
