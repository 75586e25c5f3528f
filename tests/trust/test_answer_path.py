"""Issue 25, items 1, 3, 4 and 7 (and the prompt-file parts of 20): one zero-shot answer path, prompt sets that
know their domain and whether they are free texts. Each test failed on the main of 2026-12-06."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvlkit import MedvlkitError
from medvlkit.apps.cli import main
from medvlkit.data import load_dataset
from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import load_prompt_set, resolve_prompt_set

QUIET = ["--quiet", "--workers", "0", "--no-cache"]


def _medpix_pair(data_root: Path, folder: Path, labelled: bool) -> dict[str, Path]:
    """One real MedPix CT and one MR test image, in class folders (labelled) or flat."""
    ds = load_dataset(data_root / "medpix2", split="test")
    picked = {}
    for c, name in enumerate(ds.classnames):
        item = Path(ds.items[int(np.flatnonzero(ds.labels[:, c] == 1)[0])])
        dest = folder / name / item.name if labelled else folder / item.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(item)
        picked[name] = dest
    return picked


def _predictions(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv", newline="") as f:
        return {Path(r["file"]).name: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_item07_server_and_cli_give_the_same_answer(lite, data_root, tmp_path):
    """CLI P(MR) 0.999 vs server 0.707 for one image and one prompt set: the CLI renormalised over the folder's
    classes, the server over the set's. Now one answer function; the classes are recorded as softmax_over."""
    from fastapi.testclient import TestClient

    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine

    picked = _medpix_pair(data_root, tmp_path / "labelled", labelled=True)
    _medpix_pair(data_root, tmp_path / "flat", labelled=False)
    for kind in ("labelled", "flat"):
        assert main(["zeroshot", "--data", str(tmp_path / kind), "--prompts", "modality", "--bootstrap", "0",
                     "--out", str(tmp_path / f"run-{kind}"), *QUIET]) == 0
    labelled, flat = _predictions(tmp_path / "run-labelled"), _predictions(tmp_path / "run-flat")
    result = json.loads((tmp_path / "run-labelled" / "result.json").read_text())
    assert result["softmax_over"] == ["CT", "MR"] and result["prompt_set"] == "modality"
    assert all(r["softmax_over"] == "CT|MR" for r in labelled.values())
    six = load_prompt_set("modality").classnames
    assert all(r["softmax_over"] == "|".join(six) for r in flat.values())

    engine = ServeEngine(lite, ["modality"], cache=False)
    with TestClient(create_app(engine)) as client:
        for path in picked.values():
            files = [("files", (path.name, path.read_bytes(), "application/octet-stream"))]
            restricted = client.post("/zeroshot", files=files, data={"prompts": "modality", "classes": "CT,MR"})
            whole = client.post("/zeroshot", files=files, data={"prompts": "modality"})
            assert restricted.status_code == 200, restricted.text
            got, full = restricted.json(), whole.json()
            assert got["prompts"]["softmax_over"] == ["CT", "MR"] and full["prompts"]["softmax_over"] == six
            for c in ("CT", "MR"):  # the same image, set and classes give the same number on both paths
                assert got["results"][0]["probabilities"][c] == pytest.approx(float(labelled[path.name][f"prob_{c}"]),
                                                                              abs=1e-6)
            for c in six:
                assert full["results"][0]["probabilities"][c] == pytest.approx(float(flat[path.name][f"prob_{c}"]),
                                                                               abs=1e-6)


def test_item01_digit_aliases_never_choose_prompts(data_root, tmp_path):
    """breastmnist_224.npz (classes "0","1" before: its stem was not in the MedMNIST table) was scored with the
    pneumonia prompts through the digit aliases; a 0/1 dataset of unknown kind must get no shipped set at all."""
    from medvlkit.tasks.sweep import dataset_tasks, matching_prompts

    sized = tmp_path / "breastmnist_224.npz"
    shutil.copy(data_root / "medmnist" / "breastmnist.npz", sized)
    ds = load_dataset(sized, split="test")
    assert ds.classnames == ["malignant", "normal, benign"] and ds.domain == "ultrasound"
    assert matching_prompts(ds).name == "breast_ultrasound"

    unknown = tmp_path / "my_scans.npz"
    shutil.copy(data_root / "medmnist" / "breastmnist.npz", unknown)
    numbered = load_dataset(unknown, split="test")
    assert numbered.classnames == ["0", "1"]
    with pytest.raises(MedvlkitError, match="numbers"):
        matching_prompts(numbered)
    with pytest.raises(MedvlkitError, match="numbers"):
        load_prompt_set("pneumonia").select(["0", "1"])
    from medvlkit.engine.options import DataOptions

    why = dataset_tasks(numbered, str(unknown), DataOptions(), ("auto",))
    assert "zeroshot" not in why  # not applicable, with its reason in the plan
    why = dataset_tasks(numbered, str(unknown), DataOptions(), ("zeroshot",))
    assert "numbers" in why["zeroshot"]


def test_item01_prompt_set_domain_must_agree():
    """Classes that match by name are not enough: a set describing chest X-rays is never chosen for ultrasound."""
    from medvlkit.tasks.sweep import matching_prompts

    us = ImageDataset(["a.png", "b.png"], "us", ["normal", "pneumonia"], np.eye(2), meta={"domain": "ultrasound"})
    assert matching_prompts(us).name == "classes"  # generic prompts of the class names, not the chest set
    cxr = ImageDataset(["a.png", "b.png"], "cxr", ["NORMAL", "PNEUMONIA"], np.eye(2))
    assert matching_prompts(cxr).name == "pneumonia"
    assert load_prompt_set("pneumonia").domain == "chest x-ray"


@pytest.mark.slow
def test_item01_sweep_prints_and_records_the_prompt_set(data_root, tmp_path, capsys):
    sized = tmp_path / "breastmnist_224.npz"
    shutil.copy(data_root / "medmnist" / "breastmnist.npz", sized)
    assert main(["eval", "-m", "lite", "-d", str(sized), "--task", "zeroshot", "--bootstrap", "0",
                 "--out", str(tmp_path / "sweep"), *QUIET]) == 0
    assert "breast_ultrasound" in capsys.readouterr().out
    cells = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["cells"]
    assert [c["prompts"] for c in cells] == ["breast_ultrasound"]
    result = json.loads((Path(cells[0]["out"]) / "result.json").read_text())
    assert result["prompt_set"] == "breast_ultrasound" and result["softmax_over"] == ["malignant", "normal, benign"]


def _two_films(data_root: Path, folder: Path) -> None:
    test = data_root / "chest_xray_pneumonia" / "test"
    for cls in ("NORMAL", "PNEUMONIA"):
        (folder / cls).mkdir(parents=True)
        src = sorted((test / cls).glob("*.jpeg"))[0]
        (folder / cls / src.name).symlink_to(src)


@pytest.mark.slow
def test_item03_explain_truth_follows_class_names(data_root, tmp_path):
    """--classes in another order than the data's: truth was attached by position, so the report framed a NORMAL
    film as the true pneumonia case; with more texts than classes the report crashed."""
    from medvlkit.apps.report import write_report

    _two_films(data_root, tmp_path / "data")
    out = tmp_path / "explain"
    assert main(["explain", "--data", str(tmp_path / "data"), "--classes", "pneumonia,normal", "--out", str(out),
                 "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["classes"] == ["NORMAL", "PNEUMONIA"]  # aligned to the data like any prompt set
    for row in res["images"]:
        truth_class = Path(row["file"]).parent.name
        assert row["truth"] == {c: int(c == truth_class) for c in ("NORMAL", "PNEUMONIA")}
    write_report([out], tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    pneumonia_block = page.split("confident “PNEUMONIA”")[1].split("confident")[0]
    hits = [seg.split("<figcaption>")[1].split("<br>")[0] for seg in pneumonia_block.split('<figure class="hit">')[1:]]
    assert hits and all(name.startswith(("person", "BACTERIA", "VIRUS")) or "NORMAL" not in name for name in hits)
    normal_file = next(Path(r["file"]).name for r in res["images"] if "NORMAL" in r["file"])
    assert normal_file not in hits

    texts = tmp_path / "texts"
    assert main(["explain", "--data", str(tmp_path / "data"), "--text", "opacity", "--text", "clear lungs",
                 "--text", "a rib", "--out", str(texts), "--quiet"]) == 0
    res = json.loads((texts / "result.json").read_text())
    assert res["free_text"] is True and res["classes"] == ["opacity", "clear lungs", "a rib"]
    assert all(set(r["truth"]) == {"NORMAL", "PNEUMONIA"} for r in res["images"])
    write_report([texts], tmp_path / "report-texts")  # crashed with IndexError
    assert 'class="hit"' not in (tmp_path / "report-texts" / "report.html").read_text()


@pytest.mark.slow
def test_item04_explain_overlays_never_overwrite_each_other(data_root, tmp_path):
    _two_films(data_root, tmp_path / "data")
    stem = "a chest radiograph of a child showing the right lower lobe of the lungs with"
    texts = [stem + " consolidation", stem + " no consolidation at all"]
    out = tmp_path / "explain"
    assert main(["explain", "--data", str(tmp_path / "data" / "PNEUMONIA"), "--text", texts[0], "--text", texts[1],
                 "--out", str(out), "--quiet"]) == 0
    row = json.loads((out / "result.json").read_text())["images"][0]
    files = [row["overlays"][t] for t in texts]
    assert len(set(files)) == 2 and all((out / f).is_file() for f in files)
    maps = np.load(out / row["map"])
    assert maps.shape[0] == 2


def test_item20_prompt_files_are_read_as_written(tmp_path):
    """A phrase given as a string was iterated letter by letter; [""] was an empty prompt; --classes a,a made
    duplicate columns."""
    def write(classes) -> str:
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"name": "x", "classes": classes}))
        return str(path)

    with pytest.raises(MedvlkitError, match="list of strings"):
        load_prompt_set(write({"a": {"prompts": "pneumonia"}, "b": ["clear"]}))
    with pytest.raises(MedvlkitError, match="non-empty"):
        load_prompt_set(write({"a": [""], "b": ["clear"]}))
    with pytest.raises(MedvlkitError, match="same"):
        resolve_prompt_set(classes="a,a")
    with pytest.raises(MedvlkitError, match="same"):
        resolve_prompt_set(classes="Pleural Effusion,pleural_effusion")
    assert load_prompt_set(write({"a": ["x"], "b": ["y"]})).classnames == ["a", "b"]
    assert resolve_prompt_set("modality", "MR,CT").classnames == ["MR", "CT"]  # a set restricted to some classes
