"""The vectorised bootstrap gives the per-resample loop's intervals (same seed, 1e-12), and its per-resample
values equal scikit-learn's on a few resamples."""

import numpy as np
import pytest

from medvlkit.engine.bootstrap import (
    bootstrap_classification,
    multilabel_samples,
    resample_weights,
    single_label_samples,
)
from medvlkit.engine.metrics import bootstrap_ci, multilabel_metrics, single_label_metrics
from medvlkit.tasks.evaluate import CI_KEYS_MULTI, CI_KEYS_SINGLE


def _single(n, c, seed, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    scores = np.log(rng.dirichlet(np.ones(c), n)) + 0.8 * np.eye(c)[y]
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    d = scores.argmax(1)
    d[: n // 7] = rng.integers(0, c, n // 7)  # decisions that are not the argmax (validation thresholds)
    return y, scores, d


def _multi(n, c, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(float)
    labels[rng.random((n, c)) < 0.1] = np.nan  # unknown labels, masked per class
    labels[:, -1] = np.where(rng.random(n) < 0.02, 1.0, 0.0)  # a rare class: many resamples without a positive
    scores = np.round(np.log(rng.random((n, c))) + np.nan_to_num(labels), 2)
    return labels, scores, np.log(np.full(c, 0.4))


@pytest.mark.parametrize("n,c,ties", [(40, 2, False), (57, 3, True), (200, 5, False), (9, 4, True)])
def test_single_label_cis_equal_the_loop(n, c, ties):
    y, scores, d = _single(n, c, n + c, ties)
    names = [f"c{i}" for i in range(c)]
    loop = bootstrap_ci(lambda a, b, e: single_label_metrics(a, b, names, e), (y, scores, d), 300, 7,
                        keys=CI_KEYS_SINGLE)
    fast = bootstrap_classification("single", (y, scores, d), CI_KEYS_SINGLE, 300, 7)
    for k in CI_KEYS_SINGLE:
        np.testing.assert_allclose(fast[k], loop[k], atol=1e-12, rtol=0, err_msg=k)


@pytest.mark.parametrize("n,c", [(60, 3), (150, 6), (11, 2)])
def test_multilabel_cis_equal_the_loop(n, c):
    labels, scores, thr = _multi(n, c, n * c)
    names = [f"c{i}" for i in range(c)]
    loop = bootstrap_ci(lambda a, b: multilabel_metrics(a, b, names, thr), (labels, scores), 300, 3,
                        keys=CI_KEYS_MULTI)
    fast = bootstrap_classification("multi", (labels, scores, thr), CI_KEYS_MULTI, 300, 3)
    for k in CI_KEYS_MULTI:
        np.testing.assert_allclose(fast[k], loop[k], atol=1e-12, rtol=0, err_msg=k)


def test_resamples_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    y, scores, d = _single(120, 3, 5, ties=True)
    rng = np.random.default_rng(11)
    w = next(resample_weights(120, 4, 11))
    for b in range(4):
        idx = rng.integers(0, 120, 120)  # the draws resample_weights made
        np.testing.assert_array_equal(np.bincount(idx, minlength=120), w[:, b])
        got = single_label_samples(w[:, b:b + 1], y, scores, d)
        ovr = [roc_auc_score(y[idx] == k, scores[idx, k]) for k in range(3)]
        assert got["auroc"][0] == pytest.approx(np.mean(ovr), abs=1e-12)
        ap = [average_precision_score(y[idx] == k, scores[idx, k]) for k in range(3)]
        assert got["average_precision"][0] == pytest.approx(np.mean(ap), abs=1e-12)
        assert got["macro_f1"][0] == pytest.approx(f1_score(y[idx], d[idx], average="macro"), abs=1e-12)
    labels, mscores, thr = _multi(80, 3, 2)
    w = next(resample_weights(80, 1, 0))
    idx = np.random.default_rng(0).integers(0, 80, 80)
    got = multilabel_samples(w, labels, mscores, thr)
    ref = multilabel_metrics(labels[idx], mscores[idx], ["a", "b", "c"], thr)
    for k in CI_KEYS_MULTI:
        assert got[k][0] == pytest.approx(ref[k], abs=1e-12, nan_ok=True), k
