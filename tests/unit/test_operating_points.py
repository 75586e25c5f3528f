"""Operating points (issue 30, item 1), checked by hand on small data: thresholds are chosen on validation scores and
applied to test scores (the test-optimal threshold is never computed), rates and their bootstrap intervals equal a
per-resample loop, predictive values at a stated prevalence follow Bayes' rule, and net benefit its formula."""

import numpy as np
import pytest

from medvlkit.engine.metrics import bootstrap_ci
from medvlkit.engine.operating_points import (
    net_benefit,
    operating_points,
    predictive_values,
    rates,
    threshold_at_sensitivity,
    threshold_at_specificity,
)
from medvlkit.errors import MedvlkitError

Y_VAL = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
S_VAL = np.array([.1, .2, .3, .4, .9, .35, .5, .6, .7, .8])


def test_thresholds_by_hand():
    # specificity >= 0.8 on validation: 4 of 5 negatives below t, so 0.4 < t; the lowest score above 0.4 is 0.5
    assert threshold_at_specificity(Y_VAL, S_VAL, 0.8) == 0.5
    # specificity >= 0.6: 3 of 5 below -> the lowest such threshold is 0.35 (0.1, 0.2, 0.3 below it)
    assert threshold_at_specificity(Y_VAL, S_VAL, 0.6) == 0.35
    assert threshold_at_specificity(Y_VAL, S_VAL, 1.0) == np.inf  # 0.9 is a negative: nothing finite reaches 1.0
    # sensitivity >= 0.8: 4 of 5 positives at or above t -> the highest such t is 0.5
    assert threshold_at_sensitivity(Y_VAL, S_VAL, 0.8) == 0.5
    assert threshold_at_sensitivity(Y_VAL, S_VAL, 1.0) == 0.35


def test_rates_predictive_values_and_net_benefit_by_hand():
    r = rates(Y_VAL, S_VAL, 0.5)  # calls: .9 (neg), .5 .6 .7 .8 (pos) -> TP 4, FP 1, FN 1 (0.35), TN 4
    assert r == pytest.approx({"sensitivity": 0.8, "specificity": 0.8, "ppv": 0.8, "npv": 0.8})
    ppv, npv = predictive_values(0.8, 0.8, 0.1)
    assert ppv == pytest.approx(0.08 / (0.08 + 0.18)) and npv == pytest.approx(0.72 / (0.72 + 0.02))
    nb = net_benefit(Y_VAL, S_VAL, np.array([0.5]))
    assert nb["model"][0] == pytest.approx(4 / 10 - 1 / 10 * 1.0)  # TP/n - FP/n * 0.5 / 0.5
    assert nb["treat_all"][0] == pytest.approx(0.5 - 0.5) and nb["treat_none"][0] == 0


def test_test_rates_use_the_validation_threshold_and_intervals_equal_a_loop():
    rng = np.random.default_rng(1)
    y_test = rng.integers(0, 2, 300)
    s_test = np.clip(y_test * 0.3 + rng.normal(0.4, 0.2, 300), 0, 1)
    (row,) = operating_points(Y_VAL, S_VAL, y_test, s_test, specificities=(0.8,), sensitivities=(),
                              n_bootstrap=200, seed=3)
    assert row["threshold"] == 0.5 and row["val_specificity"] == pytest.approx(0.8)
    assert row["sensitivity"] == pytest.approx(rates(y_test, s_test, 0.5)["sensitivity"])  # the test's, at val's t
    loop = bootstrap_ci(lambda y, s: rates(y, s, 0.5), (y_test.astype(float), s_test), n_resamples=200, seed=3)
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        assert row["ci"][name] == pytest.approx(loop[name], abs=1e-12)


def test_unknown_labels_count_nowhere_and_bad_input_is_refused():
    y = np.array([0, 1, np.nan, 1, 0])
    s = np.array([.1, .9, .99, .8, .2])
    assert rates(y, s, 0.5) == pytest.approx({"sensitivity": 1.0, "specificity": 1.0, "ppv": 1.0, "npv": 1.0})
    for bad in ((np.ones(4), np.ones(4)), (np.array([0, 2, 1]), np.ones(3)), (np.array([0, 1]), np.ones(3))):
        with pytest.raises(MedvlkitError):
            rates(*bad, 0.5)
    with pytest.raises(MedvlkitError, match="prevalence"):
        predictive_values(0.9, 0.9, 0)


def test_thresholds_and_rates_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix, recall_score, roc_curve

    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(20, 300))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = np.round(rng.normal(y * 0.8, 1.0), int(rng.integers(1, 4)))  # rounding makes ties
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        for target in (0.8, 0.9, 0.95, 1.0):
            assert threshold_at_specificity(y, s, target) == thr[1 - fpr >= target - 1e-12].min()
            assert threshold_at_sensitivity(y, s, target) == thr[tpr >= target - 1e-12].max()
        t = threshold_at_specificity(y, s, 0.9)
        y2 = rng.integers(0, 2, 200)
        s2 = rng.normal(y2 * 0.8, 1.0)
        tn, fp, fn, tp = confusion_matrix(y2, s2 >= t, labels=[0, 1]).ravel()
        r = rates(y2, s2, t)
        assert r["sensitivity"] == pytest.approx(recall_score(y2, s2 >= t))
        assert r["specificity"] == pytest.approx(tn / (tn + fp))
