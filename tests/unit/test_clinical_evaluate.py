"""`evaluate` for a clinical reader (issue 30, item 1): operating points chosen on validation predictions and reported
on the predictions scored, checked by hand and made to lie: validation columns in another order, validation images
shared with the test set, validation without truth, another mode; decision curves by their formula."""

import json

import numpy as np
import pytest

from medvlkit.apps.cli import main
from medvlkit.engine.operating_points import rates, threshold_at_specificity
from medvlkit.engine.results import write_predictions
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.evaluate import ClinicalOptions, evaluate_task

CLASSES = ["normal", "pneumonia"]


def _binary(n: int, seed: int, prefix: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(files, one-hot labels, log-probabilities) of a noisy two-class softmax."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.uniform(0.05, 0.7, n), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    return [f"{prefix}{i}.png" for i in range(n)], np.eye(2)[y], np.log(probs)


def _write(folder, files, labels, log_probs, classes=CLASSES, multilabel=False):
    write_predictions(folder, files, classes, log_probs, labels, multilabel)
    return folder / "predictions.csv"


def test_operating_points_equal_a_hand_computation(tmp_path):
    vf, vy, vlp = _binary(200, 0, "val/")
    tf, ty, tlp = _binary(300, 1, "test/")
    val, test = _write(tmp_path / "v", vf, vy, vlp), _write(tmp_path / "t", tf, ty, tlp)
    result, _ = evaluate_task(test, None, tmp_path / "out", n_bootstrap=50,
                              clinical=ClinicalOptions(val, (0.9,), (0.95,), prevalence=0.05))
    rows = result["operating_points"]["classes"]["pneumonia"]
    t = threshold_at_specificity(vy[:, 1], vlp[:, 1], 0.9)  # chosen on validation, in log-probability
    by_hand = rates(ty[:, 1], tlp[:, 1], t)  # and applied to test
    assert rows[0]["target"] == "specificity" and rows[0]["threshold"] == pytest.approx(np.exp(t))
    assert rows[0]["sensitivity"] == pytest.approx(by_hand["sensitivity"])
    assert rows[0]["specificity"] == pytest.approx(by_hand["specificity"])
    assert result["metrics"]["sensitivity@specificity0.9/pneumonia"] == pytest.approx(by_hand["sensitivity"])
    assert rows[1]["target"] == "sensitivity" and rows[1]["val_sensitivity"] >= 0.95
    sens, spec = by_hand["sensitivity"], by_hand["specificity"]
    assert rows[0]["ppv_at_prevalence"] == pytest.approx(sens * .05 / (sens * .05 + (1 - spec) * .95))
    # the decision curve of the positive (second) class, by its formula at p_t = 0.3
    curve = result["decision_curve"]["pneumonia"]
    i = curve["threshold"].index(0.3)
    call, pos = np.exp(tlp[:, 1]) >= 0.3, ty[:, 1] == 1
    assert curve["model"][i] == pytest.approx((call & pos).mean() - (call & ~pos).mean() * 0.3 / 0.7)
    assert curve["treat_all"][i] == pytest.approx(pos.mean() - (1 - pos.mean()) * 0.3 / 0.7)


def test_validation_columns_in_another_order_give_the_same_points(tmp_path):
    vf, vy, vlp = _binary(150, 2, "val/")
    tf, ty, tlp = _binary(150, 3, "test/")
    test = _write(tmp_path / "t", tf, ty, tlp)
    straight = _write(tmp_path / "v1", vf, vy, vlp)
    flipped = _write(tmp_path / "v2", vf, vy[:, ::-1], vlp[:, ::-1], classes=CLASSES[::-1])
    a, _ = evaluate_task(test, None, tmp_path / "a", n_bootstrap=0, clinical=ClinicalOptions(straight))
    b, _ = evaluate_task(test, None, tmp_path / "b", n_bootstrap=0, clinical=ClinicalOptions(flipped))
    assert a["operating_points"]["classes"] == b["operating_points"]["classes"]


def test_thresholds_from_the_images_scored_are_refused(tmp_path):
    tf, ty, tlp = _binary(100, 4, "test/")
    test = _write(tmp_path / "t", tf, ty, tlp)
    with pytest.raises(MedvlkitError, match="shares 100 file"):
        evaluate_task(test, None, tmp_path / "o", n_bootstrap=0, clinical=ClinicalOptions(test))
    unlabelled = _write(tmp_path / "u", [f"v{i}" for i in range(100)], None, tlp)
    with pytest.raises(MedvlkitError, match="no true labels"):
        evaluate_task(test, None, tmp_path / "o2", n_bootstrap=0, clinical=ClinicalOptions(unlabelled))
    multi = _write(tmp_path / "m", [f"v{i}" for i in range(100)], ty, tlp, multilabel=True)
    with pytest.raises(MedvlkitError, match="multi-label"):
        evaluate_task(test, None, tmp_path / "o3", n_bootstrap=0, clinical=ClinicalOptions(multi))
    three = _write(tmp_path / "3", [f"v{i}" for i in range(100)], np.eye(3)[np.arange(100) % 3],
                   np.log(np.full((100, 3), 1 / 3)), classes=[*CLASSES, "covid"])
    with pytest.raises(MedvlkitError, match="softmax over"):  # other classes: other probabilities
        evaluate_task(test, None, tmp_path / "o5", n_bootstrap=0, clinical=ClinicalOptions(three))
    with pytest.raises(MedvlkitError, match="--positive effusion"):
        evaluate_task(test, None, tmp_path / "o4", n_bootstrap=0, clinical=ClinicalOptions(positive="effusion"))


def test_multilabel_unknown_labels_and_a_class_without_positives(tmp_path):
    rng = np.random.default_rng(5)
    classes = ["effusion", "edema", "nodule"]

    def data(n, prefix):
        y = rng.integers(0, 2, (n, 3)).astype(float)
        y[rng.random((n, 3)) < 0.2] = np.nan  # unknown
        y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # nodule: no positive anywhere
        p = np.clip(0.3 * np.nan_to_num(y) + rng.uniform(0.05, 0.6, (n, 3)), 0.01, 0.99)
        return [f"{prefix}{i}" for i in range(n)], y, np.log(p)

    vf, vy, vlp = data(120, "v")
    tf, ty, tlp = data(120, "t")
    val = _write(tmp_path / "v", vf, vy, vlp, classes, multilabel=True)
    test = _write(tmp_path / "t", tf, ty, tlp, classes, multilabel=True)
    result, _ = evaluate_task(test, None, tmp_path / "o", n_bootstrap=20, clinical=ClinicalOptions(val, (0.9,), ()))
    points = result["operating_points"]
    assert points["not_scored"] == {"nodule": "validation: no positive example"}
    known = ~np.isnan(ty[:, 0])
    t = threshold_at_specificity(vy[:, 0], vlp[:, 0], 0.9)
    assert points["classes"]["effusion"][0]["sensitivity"] == pytest.approx(
        rates(ty[known, 0], tlp[known, 0], t)["sensitivity"])
    assert set(result["decision_curve"]) == {"effusion", "edema"}  # nodule has no positive to weigh


def test_cli_writes_operating_points_and_the_report_shows_them(tmp_path, capsys):
    vf, vy, vlp = _binary(120, 6, "val/")
    tf, ty, tlp = _binary(120, 7, "test/")
    val, test = _write(tmp_path / "v", vf, vy, vlp), _write(tmp_path / "t", tf, ty, tlp)
    assert main(["evaluate", "--predictions", str(test), "--val-predictions", str(val), "--specificity", "0.95",
                 "--sensitivity", "", "--bootstrap", "20", "--out", str(tmp_path / "e")]) == 0
    assert "operating points" in capsys.readouterr().out
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    assert [r["level"] for r in result["operating_points"]["classes"]["normal"]] == [0.95]
    assert main(["report", str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "operating points: thresholds chosen on" in page and 'alt="decision curve pneumonia"' in page
    assert main(["evaluate", "--predictions", str(test), "--val-predictions", str(val), "--specificity", "95",
                 "--out", str(tmp_path / "e2")]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err


def test_zeroshot_the_sweep_evaluate_and_calibrate_agree(tiny_clip_dir, tmp_path):
    """Several paths to one set of clinical figures: `zeroshot --val-split`, the `eval` sweep's zero-shot cell,
    `evaluate --val-predictions` on the two splits' own predictions files, and (for the prediction sets)
    `calibrate --conformal` + `apply-calibration`; subgroups and prompt sensitivity from zeroshot and the sweep."""
    from tests.helpers import make_split_folders

    data = make_split_folders(tmp_path / "d", {"train": 2, "val": 8, "test": 8})
    tests = sorted(str(p.resolve()) for p in (data / "test").rglob("*.png"))
    (tmp_path / "meta.csv").write_text("file,site\n" + "".join(f"{f},{'AB'[i % 2]}\n" for i, f in enumerate(tests)))
    common = ["--model", f"hf:{tiny_clip_dir}", "--data", str(data), "-q", "--workers", "0", "--bootstrap", "30",
              "--prompts", "pneumonia"]
    clinical = ["--conformal", "0.8", "--subgroups", "site", "--metadata", str(tmp_path / "meta.csv"),
                "--min-subgroup", "2", "--prompt-sensitivity"]
    assert main(["zeroshot", *common, "--split", "test", "--val-split", "val", *clinical, "--out",
                 str(tmp_path / "z")]) == 0
    assert main(["zeroshot", *common, "--split", "val", "--out", str(tmp_path / "zv")]) == 0
    assert main(["zeroshot", *common, "--split", "test", "--out", str(tmp_path / "zt")]) == 0
    val, test = str(tmp_path / "zv" / "predictions.csv"), str(tmp_path / "zt" / "predictions.csv")
    assert main(["evaluate", "--predictions", test, "--val-predictions", val, "--bootstrap", "30", "--conformal", "0.8",
                 "--subgroups", "site", "--metadata", str(tmp_path / "meta.csv"), "--min-subgroup", "2",
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(data), "--task", "zeroshot", "--val-split", "val",
                 *clinical, "--prompts", "pneumonia", "--bootstrap", "30", "-q", "--workers", "0", "--out",
                 str(tmp_path / "s")]) == 0
    assert main(["calibrate", "--predictions", val, "--conformal", "0.8", "--thresholds", "none", "--out",
                 str(tmp_path / "c")]) == 0
    assert main(["apply-calibration", "--predictions", test, "--calibration", str(tmp_path / "c" / "calibration.json"),
                 "--bootstrap", "30", "--out", str(tmp_path / "a")]) == 0
    direct = json.loads((tmp_path / "z" / "result.json").read_text())
    by_files = json.loads((tmp_path / "e" / "result.json").read_text())
    (cell,) = (tmp_path / "s").rglob("zeroshot/result.json")
    swept = json.loads(cell.read_text())
    applied = json.loads((tmp_path / "a" / "result.json").read_text())
    for other in (by_files, swept):
        assert other["operating_points"]["classes"] == direct["operating_points"]["classes"]
        assert other["decision_curve"] == direct["decision_curve"]
        assert other["subgroups"] == direct["subgroups"]
    for other in (by_files, swept, applied):
        for k in ("coverage", "mean_set_size", "per_class", "ci", "q"):
            assert other["conformal"][k] == direct["conformal"][k], k
    assert swept["prompt_sensitivity"] == direct["prompt_sensitivity"]
    assert set(direct["subgroups"]["site"]["groups"]) == {"all", "A", "B"}
    assert direct["identity"]["clinical"]["validation"]["data"] != direct["identity"]["data"]  # the val split too
    assert main(["report", str(tmp_path / "z"), "--out", str(tmp_path / "r")]) == 0  # thresholds none reaches too
    assert main(["zeroshot", *common, "--split", "test", "--val-split", "test", "--out", str(tmp_path / "bad")]) == 2
    assert main(["zeroshot", *common, "--split", "test", "--conformal", "0.9", "--out", str(tmp_path / "bad")]) == 2
