import json

import numpy as np
import pytest

from medvlkit import MedvlkitError
from medvlkit.apps.cli import main
from medvlkit.engine.results import write_predictions
from medvlkit.tasks.calibrate import (
    apply_calibration,
    calibration_error,
    expected_calibration_error,
    fit_calibration,
    scale_softmax,
    sensitivity_threshold,
    youden_threshold,
)


def _overconfident(n=2000, seed=0):
    """True log-odds z, labels drawn from sigmoid(z), reported probabilities from 3z: the right temperature is 3."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros(n), 3 * z], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return y, p / p.sum(1, keepdims=True)


def test_ece_known_values():
    conf = np.array([0.9, 0.9, 0.9, 0.9])
    assert expected_calibration_error(conf, np.array([1, 1, 1, 1.0])) == pytest.approx(0.1)
    assert expected_calibration_error(conf, np.array([1, 1, 0, 0.0])) == pytest.approx(0.4)


def test_temperature_scaling_fixes_overconfidence():
    y, p = _overconfident()
    labels = np.eye(2)[y]
    cal = fit_calibration(labels, np.log(p), ["a", "b"], multilabel=False, threshold_method="none")
    assert cal.temperatures[0] == pytest.approx(3.0, rel=0.15)
    scaled, dec = apply_calibration(cal, np.log(p), ["a", "b"])
    assert calibration_error(labels, np.exp(scaled), False) < 0.5 * calibration_error(labels, p, False)
    np.testing.assert_array_equal(dec, p.argmax(1))  # temperature never changes the argmax
    np.testing.assert_allclose(np.exp(scale_softmax(np.log(p), 1.0)), p, atol=1e-12)


def test_thresholds():
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    s = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    # J = 2/3 at 0.5 (sens 1, spec 2/3) and at 0.7 (sens 2/3, spec 1): the tie goes to the lower, more sensitive one
    assert youden_threshold(y, s) == 0.5
    assert sensitivity_threshold(y, s, 1.0) == 0.5 and sensitivity_threshold(y, s, 0.6) == 0.7
    with pytest.raises(MedvlkitError):
        sensitivity_threshold(np.zeros(3, bool), s[:3], 0.9)


def test_multilabel_per_class_temperatures():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (400, 2)).astype(float)
    p = 1 / (1 + np.exp(-4 * ((y * 2 - 1) * 0.7 + rng.normal(size=(400, 2)))))
    y[:20, 0] = np.nan
    cal = fit_calibration(y, np.log(p), ["x", "z"], multilabel=True, threshold_method="sensitivity",
                          target_sensitivity=0.8)
    assert len(cal.temperatures) == 2 and all(t > 1.5 for t in cal.temperatures)
    scaled, dec = apply_calibration(cal, np.log(p), ["x", "z"])
    assert dec.shape == (400, 2) and calibration_error(y, np.exp(scaled), True) < calibration_error(y, p, True)
    with pytest.raises(MedvlkitError, match="fitted for classes"):
        apply_calibration(cal, np.log(p), ["z", "x"])


def test_cli_calibrate_then_apply(tmp_path):
    names = ["NORMAL", "PNEUMONIA"]
    for split, seed in (("val", 0), ("test", 1)):
        y, p = _overconfident(seed=seed)
        write_predictions(tmp_path / split, [f"{split}{i}.png" for i in range(len(y))], names, np.log(p), np.eye(2)[y],
                          False)
    assert main(["calibrate", "--predictions", str(tmp_path / "val" / "predictions.csv"), "--out",
                 str(tmp_path / "cal")]) == 0
    cal = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert cal["threshold_method"] == "youden" and len(cal["thresholds"]) == 2
    assert cal["fitted_on"]["predictions"].endswith("val/predictions.csv")
    assert (tmp_path / "cal" / "reliability.png").stat().st_size > 1000
    assert main(["apply-calibration", "--predictions", str(tmp_path / "test" / "predictions.csv"), "--calibration",
                 str(tmp_path / "cal" / "calibration.json"), "--out", str(tmp_path / "applied"),
                 "--bootstrap", "20"]) == 0
    res = json.loads((tmp_path / "applied" / "result.json").read_text())
    assert res["metrics"]["ece"] < res["metrics"]["ece_uncalibrated"]
    assert res["metrics"]["auroc"] == pytest.approx(res["metrics_uncalibrated"]["auroc"], abs=1e-6)
    unlabelled = tmp_path / "nolab"
    write_predictions(unlabelled, ["a.png"], names, np.log(np.array([[0.2, 0.8]])), None, False)
    assert main(["calibrate", "--predictions", str(unlabelled / "predictions.csv"), "--out", str(tmp_path / "x")]) == 2
