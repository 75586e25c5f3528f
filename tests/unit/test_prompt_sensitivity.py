"""Prompt sensitivity (issue 30, item 3): the wordings a set is split into, by hand; each wording's numbers equal a
plain zero-shot run of that wording alone (two paths, one answer); a pos/neg pair written the wrong way round is
caught; sets with nothing to compare and unlabelled data are refused before any image is read."""

import csv
import json

import pytest

from medvlkit.apps.cli import main
from medvlkit.data.prompts import load_prompt_set, prompt_set_from_classes
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.prompt_sensitivity import check_wordings, prompt_variants


def test_wordings_by_hand():
    ps = load_prompt_set("pneumonia")
    variants = prompt_variants(ps)
    kinds = [k for k, _, _ in variants]
    assert kinds == ["ensemble"] + ["template"] * len(ps.templates) + ["synonym"] * 4
    _, name, second = variants[2]
    assert second.templates == [ps.templates[1]] and name == f"template 2: {ps.templates[1]}"
    assert [c.positive for c in second.classes] == [c.positive for c in ps.classes]  # every phrase
    _, _, third_syn = variants[1 + len(ps.templates) + 2]
    assert [c.positive for c in third_syn.classes] == [[c.positive[2]] for c in ps.classes]
    assert third_syn.templates == ps.templates
    short = prompt_set_from_classes(["a", "b"])
    short.classes[0].positive = ["a1", "a2", "a3"]  # a class with fewer phrases cycles through its own
    assert [[c.positive for c in v.classes] for k, _, v in prompt_variants(short) if k == "synonym"] == [
        [["a1"], ["b"]], [["a2"], ["b"]], [["a3"], ["b"]]]
    with pytest.raises(MedvlkitError, match="no wordings to compare"):
        check_wordings(prompt_set_from_classes(["normal", "pneumonia"]))


@pytest.fixture(scope="module")
def kermany_subset(data_root, tmp_path_factory):
    """40 real Kermany test films (20 per class) as a labels CSV."""
    folder = tmp_path_factory.mktemp("kermany")
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((data_root / "chest_xray_pneumonia" / "test" / label).glob("*.jpeg"))[:20]
        rows += [(str(f), label) for f in files]
    path = folder / "subset.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return path


@pytest.mark.data
def test_each_wording_equals_a_run_of_that_wording_alone(kermany_subset, tmp_path):
    common = ["--data", str(kermany_subset), "--bootstrap", "50", "-q", "--workers", "0"]
    assert main(["zeroshot", *common, "--prompts", "pneumonia", "--prompt-sensitivity", "--out",
                 str(tmp_path / "s")]) == 0
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    ps = result["prompt_sensitivity"]
    ensemble = ps["variants"][0]
    assert ensemble["metrics"]["auroc"] == pytest.approx(result["metrics"]["auroc"])  # the run itself
    # template 3 alone, written as its own prompt set file and run plainly
    ref = load_prompt_set("pneumonia")
    alone = {"name": "t3", "mode": "softmax", "templates": [ref.templates[2]],
             "classes": {c.name: {"aliases": c.aliases, "prompts": c.positive} for c in ref.classes}}
    (tmp_path / "t3.json").write_text(json.dumps(alone))
    assert main(["zeroshot", *common, "--prompts", str(tmp_path / "t3.json"), "--out", str(tmp_path / "t3")]) == 0
    plain = json.loads((tmp_path / "t3" / "result.json").read_text())
    row = next(v for v in ps["variants"] if v["name"].startswith("template 3"))
    assert row["metrics"]["auroc"] == pytest.approx(plain["metrics"]["auroc"], abs=1e-12)
    assert row["metrics"]["accuracy"] == pytest.approx(plain["metrics"]["accuracy"], abs=1e-12)
    assert row["ci"]["auroc"] == pytest.approx(plain["ci"]["auroc"], abs=1e-12)
    aucs = [v["metrics"]["auroc"] for v in ps["variants"] if v["kind"] != "ensemble"]
    assert ps["spread"]["auroc"] == pytest.approx(max(aucs) - min(aucs))
    ranked = sorted(v["metrics"]["auroc"] for v in ps["variants"])[::-1]
    assert ranked[ps["ensemble_rank"] - 1] == pytest.approx(ensemble["metrics"]["auroc"])


@pytest.mark.data
def test_a_pos_neg_pair_written_the_wrong_way_round_is_caught(kermany_subset, tmp_path, capsys):
    swapped = {"name": "swapped", "mode": "pos_neg", "templates": ["a chest x-ray showing {}.", "{}"],
               "classes": {"PNEUMONIA": {"positive": ["clear lungs", "normal lungs"],
                                         "negative": ["pneumonia", "lung consolidation"]},
                           "NORMAL": {"positive": ["normal lungs", "clear lungs"],
                                      "negative": ["pneumonia", "lung consolidation"]}}}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    assert main(["zeroshot", "--data", str(kermany_subset), "--prompts", str(tmp_path / "swapped.json"),
                 "--prompt-sensitivity", "--bootstrap", "100", "-q", "--workers", "0", "--out",
                 str(tmp_path / "w")]) == 0
    ps = json.loads((tmp_path / "w" / "result.json").read_text())["prompt_sensitivity"]
    assert "PNEUMONIA" in ps["inverted"] and "NORMAL" not in ps["inverted"]
    assert all(w["auroc"] < 0.5 for w in ps["inverted"]["PNEUMONIA"])
    assert "class PNEUMONIA: its prompts score it LOWER" in capsys.readouterr().out


def test_refused_before_any_image_is_read(tmp_path, capsys):
    from tests.helpers import make_image_folder

    folder = make_image_folder(tmp_path / "imgs", {"x": 2}, seed=0) / "x"
    assert main(["zeroshot", "--data", str(folder), "--prompts", "pneumonia", "--prompt-sensitivity", "-q",
                 "--out", str(tmp_path / "o")]) != 0
    assert "needs labelled data" in capsys.readouterr().err
    assert main(["zeroshot", "--data", str(folder), "--classes", "a,b", "--prompt-sensitivity", "-q",
                 "--out", str(tmp_path / "o2")]) != 0
    assert "no wordings to compare" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
