"""Split conformal prediction sets (issue 30, item 4): the rule equals MAPIE's split conformal (LAC) on the same
probabilities, the quantile follows its finite-sample formula by hand, the guarantee holds on exchangeable data
(marginal, and per class for the class-conditional rule), and `calibrate --conformal` / `apply-calibration` carry it
through files: class columns in another order, multi-label data, and the fit images themselves."""

import json

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from medvlkit.apps.cli import main
from medvlkit.engine.conformal import conformal_quantile, coverage_report, fit_conformal, prediction_sets
from medvlkit.engine.metrics import bootstrap_ci
from medvlkit.engine.results import write_predictions
from medvlkit.errors import MedvlkitError


def _data(rng, n, c=4, shift=1.5):
    logits = rng.normal(size=(n, c))
    y = rng.integers(0, c, n)
    logits[np.arange(n), y] += shift
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


class _Fixed(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose probabilities are its input: MAPIE then conformalizes exactly our numbers."""

    def fit(self, X, y):
        self.classes_ = np.arange(X.shape[1])
        return self

    def predict_proba(self, X):
        return np.asarray(X)

    def predict(self, X):
        return np.asarray(X).argmax(1)


def test_sets_equal_mapie_split_conformal():
    from mapie.classification import SplitConformalClassifier

    rng = np.random.default_rng(0)
    for n_cal, level in ((333, 0.9), (50, 0.8), (1000, 0.95)):
        pc, yc = _data(rng, n_cal)
        pt, _ = _data(rng, 400)
        ref = SplitConformalClassifier(_Fixed().fit(pc, yc), confidence_level=level, conformity_score="lac",
                                       prefit=True).conformalize(pc, yc)
        _, sets = ref.predict_set(pt)
        np.testing.assert_array_equal(prediction_sets(pt, fit_conformal(np.eye(4)[yc], pc, level)), sets[:, :, 0])


def test_quantile_by_hand():
    scores = np.array([0.5, 0.1, 0.3, 0.2, 0.4])  # n = 5
    assert conformal_quantile(scores, 0.5) == 0.3  # ceil(6 * 0.5) = 3rd smallest
    assert conformal_quantile(scores, 0.8) == 0.5  # ceil(4.8) = 5th
    assert conformal_quantile(scores, 0.9) == 1.0  # ceil(5.4) = 6 > 5: every class
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.45, 0.25]])
    # 1 - p <= 0.6 keeps p >= 0.4: 0.7 in the first row, 0.45 in the second
    np.testing.assert_array_equal(prediction_sets(probs, [0.6]), [[True, False, False], [False, True, False]])
    # per class: p >= 0.8, p >= 0.1, p >= 0.05
    np.testing.assert_array_equal(prediction_sets(probs, [0.2, 0.9, 0.95]), [[False, True, True], [False, True, True]])


def test_coverage_guarantee_holds_on_exchangeable_data():
    rng = np.random.default_rng(1)
    marginal, per_class = [], []
    for _ in range(200):
        p, y = _data(rng, 600, c=3, shift=np.array([0.5, 1.5, 3.0])[rng.integers(0, 3, 600)])
        cal, test = slice(0, 300), slice(300, 600)
        for mode, out in (("marginal", marginal), ("class", per_class)):
            sets = prediction_sets(p[test], fit_conformal(np.eye(3)[y[cal]], p[cal], 0.9, mode))
            hit = sets[np.arange(300), y[test]]
            out.append([hit.mean()] + [hit[y[test] == c].mean() for c in range(3)])
    marginal, per_class = np.array(marginal).mean(0), np.array(per_class).mean(0)
    assert marginal[0] >= 0.89 and marginal[0] < 0.93  # valid, not trivially so
    assert (per_class[1:] >= 0.89).all()  # the class-conditional rule covers every class


def test_coverage_report_intervals_equal_a_loop():
    rng = np.random.default_rng(2)
    p, y = _data(rng, 300, c=3)
    sets = prediction_sets(p, [0.7])
    rep = coverage_report(np.eye(3)[y], sets, ["a", "b", "c"], n_bootstrap=200, seed=4)
    loop = bootstrap_ci(lambda yy, ss: {"coverage": ss[np.arange(len(yy)), yy.astype(int)].mean(),
                                        "mean_set_size": ss.sum(1).mean()}, (y.astype(float), sets.astype(float)),
                        n_resamples=200, seed=4)
    assert rep["ci"]["coverage"] == pytest.approx(loop["coverage"], abs=1e-12)
    assert rep["ci"]["mean_set_size"] == pytest.approx(loop["mean_set_size"], abs=1e-12)
    m = y == 1
    assert rep["per_class"]["b"]["coverage"] == pytest.approx(sets[m, 1].mean())
    assert rep["empty_sets"] == pytest.approx((sets.sum(1) == 0).mean())


def test_bad_input_is_refused():
    p = np.array([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(MedvlkitError, match="single-label"):
        fit_conformal(np.array([[1, 1], [0, 1]]), p, 0.9)
    with pytest.raises(MedvlkitError, match="in \\(0, 1\\)"):
        fit_conformal(np.eye(2), p, 90)
    with pytest.raises(MedvlkitError, match="conformal-mode"):
        fit_conformal(np.eye(2), p, 0.9, "per-image")


def _write(folder, files, y, p, classes):
    write_predictions(folder, files, classes, np.log(p), np.eye(len(classes))[y], False)
    return str(folder / "predictions.csv")


def test_calibrate_and_apply_through_files(tmp_path, capsys):
    rng = np.random.default_rng(3)
    classes = ["glioma", "meningioma", "pituitary"]
    pv, yv = _data(rng, 400, c=3)
    pt, yt = _data(rng, 300, c=3)
    val = _write(tmp_path / "v", [f"v{i}" for i in range(400)], yv, pv, classes)
    assert main(["calibrate", "--predictions", val, "--conformal", "0.9", "--out", str(tmp_path / "cal")]) == 0
    cal = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert cal["conformal_q"] == [pytest.approx(fit_conformal(np.eye(3)[yv], pv, 0.9)[0])]
    # the test predictions with their columns in another order: sets follow the class names, not positions
    order = [2, 0, 1]
    test = _write(tmp_path / "t", [f"t{i}" for i in range(300)], np.argsort(order)[yt], pt[:, order],
                  [classes[i] for i in order])
    assert main(["apply-calibration", "--predictions", test, "--calibration", str(tmp_path / "cal" /
                 "calibration.json"), "--bootstrap", "50", "--out", str(tmp_path / "a")]) == 0
    assert "prediction sets (marginal, level 0.9)" in capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    sets = prediction_sets(pt, cal["conformal_q"])
    assert result["conformal"]["coverage"] == pytest.approx(sets[np.arange(300), yt].mean())
    assert result["metrics"]["mean_set_size"] == pytest.approx(sets.sum(1).mean())
    assert result["conformal"]["same_images_as_fit"] is False
    header = (tmp_path / "a" / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith("set_glioma,set_meningioma,set_pituitary")
    # applied to the very images it was fitted on: said, in the result and on screen
    assert main(["apply-calibration", "--predictions", val, "--calibration", str(tmp_path / "cal" /
                 "calibration.json"), "--bootstrap", "0", "--out", str(tmp_path / "same")]) == 0
    assert "no guarantee" in capsys.readouterr().out
    assert json.loads((tmp_path / "same" / "result.json").read_text())["conformal"]["same_images_as_fit"] is True
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "r")]) == 0
    assert "prediction sets: split conformal" in (tmp_path / "r" / "report.html").read_text()


def test_a_softmax_over_other_classes_is_refused(tmp_path, capsys):
    """A calibration fitted on a two-class softmax, applied to a three-class one: picking two columns out of the
    three-way softmax would give other probabilities, silently; refused."""
    rng = np.random.default_rng(5)
    pv, yv = _data(rng, 200, c=2)
    val = _write(tmp_path / "v", [f"v{i}" for i in range(200)], yv, pv, ["a", "b"])
    assert main(["calibrate", "--predictions", val, "--conformal", "0.9", "--out", str(tmp_path / "c")]) == 0
    pt, _ = _data(rng, 100, c=3)
    test = _write(tmp_path / "t", [f"t{i}" for i in range(100)], np.arange(100) % 2, pt, ["a", "b", "c"])
    assert main(["apply-calibration", "--predictions", test, "--calibration", str(tmp_path / "c" /
                 "calibration.json"), "--out", str(tmp_path / "a")]) != 0
    assert "softmax over ['a', 'b', 'c'], not over ['a', 'b']" in capsys.readouterr().err


def test_multilabel_predictions_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (50, 2)).astype(float)
    write_predictions(tmp_path / "m", [f"m{i}" for i in range(50)], ["a", "b"], np.log(rng.uniform(.1, .9, (50, 2))),
                      y, True)
    assert main(["calibrate", "--predictions", str(tmp_path / "m" / "predictions.csv"), "--conformal", "0.9",
                 "--out", str(tmp_path / "c")]) != 0
    assert "single-label" in capsys.readouterr().err
