import csv
import json

import pytest

from medvlkit.apps.cli import main

pytestmark = pytest.mark.slow


def test_demo_on_bundled_images(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["task"] == "demo" and res["model"] == "lite" and res["metrics"]["n_known"] == 12
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["gate"] for r in rows} <= {"medical", "non-medical"}
    assert {r["expected"] for r in rows} >= {"CT", "MR", "photo", "fundus photograph"}
    printed = capsys.readouterr().out
    assert "bundled images: gate" in printed and "CT_small.dcm" in printed


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
