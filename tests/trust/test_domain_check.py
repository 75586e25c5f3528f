"""Issue 25, item 15: confident findings on images they do not apply to (chest findings on a CT slice: Atelectasis
84%, Fracture 83%... under a green badge). Prompt sets name their domain; zero-shot, explain and serve check each
image against it and flag what falls outside, never dropping it; the model card's scope travels with the model,
through export too. Each test failed on the main of 2026-12-06."""

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from medvlkit.apps.cli import main

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def _ct_and_film(data_root: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(CT, folder / "ct_slice.dcm")
    film = sorted((data_root / "chest_xray_pneumonia" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    shutil.copy(film, folder / "film.jpeg")
    return folder


@pytest.mark.slow
def test_item15_zeroshot_and_explain_flag_an_image_outside_the_prompt_domain(lite, data_root, tmp_path):
    assert lite.validated_domain_thresholds and "chest x-ray" in lite.validated_domain_thresholds
    folder = _ct_and_film(data_root, tmp_path / "inbox")
    out = tmp_path / "zs"
    assert main(["zeroshot", "--data", str(folder), "--prompts", "chest_xray_findings", "--out", str(out),
                 "--workers", "0", "-q", "--no-cache", "--bootstrap", "0"]) == 0
    check = json.loads((out / "result.json").read_text())["domain_check"]
    assert check["domain"] == "chest x-ray" and check["threshold_source"].startswith("validated")
    assert [Path(r["file"]).name for r in check["out_of_domain"]] == ["ct_slice.dcm"]
    with open(out / "predictions.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    assert len(rows) == 2 and rows["ct_slice.dcm"]["in_domain"] == "0" and rows["film.jpeg"]["in_domain"] == "1"
    explained = tmp_path / "ex"
    assert main(["explain", "--data", str(folder), "--prompts", "pneumonia", "--out", str(explained), "--workers",
                 "0", "-q", "--no-cache"]) == 0
    res = json.loads((explained / "result.json").read_text())
    verdicts = {Path(r["file"]).name: r["domain"]["in_domain"] for r in res["images"]}
    assert verdicts == {"ct_slice.dcm": False, "film.jpeg": True}


@pytest.mark.slow
def test_item15_the_server_flags_it_and_names_the_scope(lite, data_root, tmp_path):
    from fastapi.testclient import TestClient

    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine

    folder = _ct_and_film(data_root, tmp_path / "inbox")
    engine = ServeEngine(lite, ["chest_xray_findings", "modality"], cache=False)
    with TestClient(create_app(engine)) as c:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in sorted(folder.iterdir())]
        got = c.post("/zeroshot", files=files, data={"prompts": "chest_xray_findings"}).json()
        domains = {r["file"]: r["domain"]["in_domain"] for r in got["results"]}
        assert domains == {"ct_slice.dcm": False, "film.jpeg": True}
        assert all(r["probabilities"] for r in got["results"])  # flagged, not dropped
        modality = c.post("/zeroshot", files=files, data={"prompts": "modality"}).json()
        assert all(r["domain"] is None for r in modality["results"])  # a set for any image names no domain
        assert "paediatric" in c.get("/info").json()["scope"]


def test_item15_scope_travels_through_export(tiny_clip_dir, tmp_path, monkeypatch, capsys):
    """An onnx: export of lite printed no caveat: the scope belonged to the spec 'lite', not to the weights."""
    from medvlkit.models.hf import HFDualEncoder

    monkeypatch.setattr(HFDualEncoder, "scope", "trained on three images", raising=False)
    monkeypatch.setattr(HFDualEncoder, "validated_domain_thresholds", {"chest x-ray": 0.3}, raising=False)
    out = tmp_path / "onnx"
    assert main(["export", "--model", f"hf:{tiny_clip_dir}", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scope"] == "trained on three images"
    from medvlkit import create_model

    onnx = create_model(f"onnx:{out}")
    assert onnx.scope == "trained on three images" and onnx.validated_domain_thresholds == {"chest x-ray": 0.3}
    data = tmp_path / "imgs"
    data.mkdir()
    shutil.copy(CT, data / "ct.dcm")
    assert main(["zeroshot", "--model", f"onnx:{out}", "--data", str(data), "--prompts", "pneumonia", "--out",
                 str(tmp_path / "zs"), "--workers", "0", "-q", "--no-cache"]) == 0
    assert "note: trained on three images" in capsys.readouterr().err
