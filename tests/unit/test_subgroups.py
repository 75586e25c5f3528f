"""Subgroup analysis (issue 30, item 2): each subgroup's metrics equal the metrics of its rows alone, the gap's paired
interval equals a per-resample loop over one whole-set draw, small subgroups are listed and not scored, age bands by
hand, and metadata joined to the right images (a file's relative name, a dataset subset in another order, the real
MedPix metadata)."""

import json

import numpy as np
import pytest

from medvlkit.apps.cli import main
from medvlkit.data.dataset import ImageDataset
from medvlkit.data.metadata import metadata_columns, read_metadata
from medvlkit.engine.metrics import auroc_binary, single_label_metrics
from medvlkit.engine.results import write_predictions
from medvlkit.engine.subgroups import age_bands, subgroup_metrics
from medvlkit.errors import MedvlkitError


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sex = rng.choice(["female", "male"], n)
    strength = np.where(sex == "male", 1.5, 0.5)  # the model is better on one group
    s1 = rng.normal(0, 1, n) + strength * y
    p1 = 1 / (1 + np.exp(-s1))
    return y, np.log(np.stack([1 - p1, p1], 1)), sex


def test_each_subgroup_equals_its_rows_alone_and_the_gap_interval_a_loop():
    y, lp, sex = _data()
    groups = list(sex)
    groups[:5] = [None] * 5  # unknown: in no subgroup
    out = subgroup_metrics("single", (y, lp, lp.argmax(1)), ["no", "yes"], groups, min_size=10, n_bootstrap=200,
                           seed=3)
    for name in ("female", "male"):
        m = np.array([g == name for g in groups])
        alone = single_label_metrics(y[m], lp[m], ["no", "yes"], lp[m].argmax(1))
        assert out["groups"][name]["n"] == m.sum()
        for k in ("accuracy", "auroc", "macro_f1", "balanced_accuracy"):
            assert out["groups"][name]["metrics"][k] == pytest.approx(alone[k])
    assert out["n_unknown"] == 5 and out["groups"]["all"]["n"] == 400
    gap = out["gap"]
    assert (gap["high"], gap["low"]) == ("male", "female")
    # the paired bootstrap by hand: one whole-set draw per resample, each group's AUROC on its rows of that draw
    rng, diffs = np.random.default_rng(3), []
    g = np.array(["" if v is None else v for v in groups])
    for _ in range(200):
        idx = rng.integers(0, 400, 400)
        a = [auroc_binary(y[idx][g[idx] == name] == 1, lp[idx][g[idx] == name][:, 1]) for name in ("male", "female")]
        diffs.append(a[0] - a[1])
    assert gap["ci"] == pytest.approx([np.quantile(diffs, 0.025), np.quantile(diffs, 0.975)], abs=1e-12)
    # and each group's own interval is its rows of the same draws
    acc = []
    rng = np.random.default_rng(3)
    for _ in range(200):
        idx = rng.integers(0, 400, 400)
        m = g[idx] == "male"
        acc.append((lp[idx][m].argmax(1) == y[idx][m]).mean())
    assert out["groups"]["male"]["ci"]["accuracy"] == pytest.approx(
        [np.quantile(acc, 0.025), np.quantile(acc, 0.975)], abs=1e-12)


def test_small_subgroups_are_listed_not_scored_and_bands_by_hand():
    assert age_bands(["3", "18", "39", "40", "64.5", "65", "90y", "", None, "unknown"], [18, 40, 65]) == [
        "<18", "18-39", "18-39", "40-64", "40-64", ">=65", ">=65", None, None, None]
    with pytest.raises(MedvlkitError, match="increasing"):
        age_bands(["3"], [40, 18])
    y, lp, _ = _data(100, 1)
    groups = ["a"] * 80 + ["b"] * 20
    out = subgroup_metrics("single", (y, lp, lp.argmax(1)), ["no", "yes"], groups, min_size=30, n_bootstrap=0)
    assert out["too_small"] == {"b": 20} and set(out["groups"]) == {"all", "a"} and out["gap"] is None


def test_multilabel_subgroups_mask_unknown_labels():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, (200, 2)).astype(float)
    labels[rng.random((200, 2)) < 0.2] = np.nan
    scores = np.log(np.clip(0.3 * np.nan_to_num(labels) + rng.uniform(0.05, 0.6, (200, 2)), 1e-3, 1))
    groups = ["x" if i % 2 else "y" for i in range(200)]
    out = subgroup_metrics("multi", (labels, scores, np.log([0.5, 0.5])), ["a", "b"], groups, min_size=10,
                           n_bootstrap=50)
    m = np.array(groups) == "x"
    known = ~np.isnan(labels[m, 0])
    expect = np.mean([auroc_binary(labels[m][known, 0] == 1, scores[m][known, 0]),
                      auroc_binary(labels[m][~np.isnan(labels[m, 1]), 1] == 1, scores[m][~np.isnan(labels[m, 1]), 1])])
    assert out["groups"]["x"]["metrics"]["auroc"] == pytest.approx(expect)


def test_metadata_joins_by_file_and_attributes_follow_a_subset(tmp_path):
    (tmp_path / "meta.csv").write_text("file,sex,age\nimgs/a.png,F,30\nimgs/b.png,M,\n")
    table = read_metadata(tmp_path / "meta.csv")
    absolute = str((tmp_path / "imgs" / "a.png").resolve())
    assert metadata_columns([absolute, "imgs/b.png", "other.png"], table, ["sex", "age"], tmp_path) == {
        "sex": ["F", "M", None], "age": ["30", None, None]}
    with pytest.raises(MedvlkitError, match="no column 'site'"):
        metadata_columns([absolute], table, ["site"], tmp_path)
    with pytest.raises(MedvlkitError, match="none of the 1 images"):
        metadata_columns(["x.png"], table, ["sex"], tmp_path)
    (tmp_path / "twice.csv").write_text("file,sex\na.png,F\na.png,M\n")
    with pytest.raises(MedvlkitError, match="listed twice"):
        read_metadata(tmp_path / "twice.csv")
    ds = ImageDataset(items=["a", "b", "c"], name="d", attributes={"sex": ["F", "M", None]})
    assert ds.subset([2, 0]).attributes == {"sex": [None, "F"]}  # aligned with the items it keeps
    with pytest.raises(ValueError, match="attribute 'sex'"):
        ImageDataset(items=["a"], name="d", attributes={"sex": ["F", "M"]})


def test_evaluate_cli_with_a_metadata_file(tmp_path, capsys):
    y, lp, sex = _data(300, 4)
    files = [f"img{i}.png" for i in range(300)]
    write_predictions(tmp_path / "p", files, ["no", "yes"], lp, np.eye(2)[y], False)
    rng = np.random.default_rng(5)
    ages = rng.integers(1, 90, 300)
    rows = [f"{f},{s},{a}" for f, s, a in zip(files, sex, ages)]
    (tmp_path / "meta.csv").write_text("file,sex,age\n" + "\n".join(rows) + "\n")
    pred = str(tmp_path / "p" / "predictions.csv")
    assert main(["evaluate", "--predictions", pred, "--metadata", str(tmp_path / "meta.csv"), "--subgroups",
                 "sex,age", "--age-bands", "18,65", "--bootstrap", "50", "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert "subgroups by sex" in printed and "largest auroc gap: male minus female" in printed
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    assert list(result["subgroups"]["age"]["groups"]) == ["all", "<18", "18-64", ">=65"]
    assert result["subgroups"]["age"]["groups"]["<18"]["n"] == int((ages < 18).sum())
    assert main(["report", str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    assert 'alt="forest plot sex"' in (tmp_path / "r" / "report.html").read_text()
    # a numeric column without bands, and a column nobody has: one-line errors
    assert main(["evaluate", "--predictions", pred, "--metadata", str(tmp_path / "meta.csv"), "--subgroups", "age",
                 "--out", str(tmp_path / "e2")]) != 0
    assert "give --age-bands" in capsys.readouterr().err
    assert main(["evaluate", "--predictions", pred, "--metadata", str(tmp_path / "meta.csv"), "--subgroups", "site",
                 "--out", str(tmp_path / "e3")]) != 0
    assert "no such metadata column" in capsys.readouterr().err


@pytest.mark.data
def test_real_medpix_metadata_is_read_per_image(data_root):
    from medvlkit import load_dataset

    ds = load_dataset(data_root / "medpix2", split="test")
    rows = [json.loads(line) for line in (data_root / "medpix2" / "descriptions_test.jsonl").read_text().splitlines()]
    by_stem = {r["image"]: r["Description"] for r in rows}
    for item, sex, age in zip(ds.items, ds.attributes["sex"], ds.attributes["age"]):
        d = by_stem[item.rsplit("/", 1)[1][:-4]]
        assert sex == (None if d["Sex"] in (None, "N/A") else d["Sex"])
        assert age == (d["Age"] or None)
    assert {"female", "male"} <= set(ds.attributes["sex"])
