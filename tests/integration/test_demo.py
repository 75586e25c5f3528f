import csv
import json

import pytest

from medvlkit.apps.cli import main

pytestmark = pytest.mark.slow


def test_demo_on_bundled_images(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["task"] == "demo" and res["model"] == "lite" and res["metrics"]["n_known"] == 16
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["gate"] for r in rows} <= {"medical", "non-medical"}
    assert {r["expected"] for r in rows} >= {"CT", "MR", "photo", "fundus photograph", "chest x-ray", "ultrasound"}
    films = [r for r in rows if r["expected"] == "chest x-ray"]  # the shipped Kermany test films
    assert len(films) == 3 and all(r["modality"] == "chest x-ray" and r["p_pneumonia"] for r in films)
    assert all(not r["p_pneumonia"] for r in rows if r["modality"] != "chest x-ray")  # outside the set's domain
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "bundled images: gate" in printed and "CT_small.dcm" in printed and "n/a: outside its domain" in printed


def test_the_shipped_films_are_what_their_attribution_says(data_root):
    """Byte for byte the Kermany test-split files ATTRIBUTION.md names (never training images of lite)."""
    import re

    from medvlkit.tasks.demo import DEMO_IMAGES

    table = re.findall(r"\| `(cxr_[^`]+)` \| `([^`]+)` \|", (DEMO_IMAGES / "ATTRIBUTION.md").read_text())
    assert len(table) == 3 and sorted(n for n, _ in table) == sorted(p.name for p in DEMO_IMAGES.glob("cxr_*"))
    for name, original in table:
        assert (DEMO_IMAGES / name).read_bytes() == \
            (data_root / "chest_xray_pneumonia" / "test" / original).read_bytes()


def test_demo_with_user_chest_xrays(tmp_path, data_root):
    import shutil

    imgs = tmp_path / "mine"
    imgs.mkdir()
    for p in sorted((data_root / "chest_xray_pneumonia" / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]:
        shutil.copy(p, imgs / p.name)
    out = tmp_path / "demo"
    assert main(["demo", "--images", str(imgs), "--out", str(out), "--quiet"]) == 0
    with open(out / "predictions.csv", newline="") as f:
        mine = [r for r in csv.DictReader(f) if "/mine/" in r["file"]]
    assert len(mine) == 3 and all(r["gate"] == "medical" and r["modality"] == "chest x-ray" for r in mine)
    assert all(0 <= float(r["p_pneumonia"]) <= 1 for r in mine)
