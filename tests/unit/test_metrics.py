import numpy as np
import pytest
from sklearn import metrics as skm

from medvlkit.engine.metrics import (
    auroc_binary,
    average_precision_binary,
    bootstrap_ci,
    confusion_matrix,
    multilabel_metrics,
    single_label_metrics,
)
from medvlkit.tasks.evaluate import evaluate_probs


@pytest.fixture
def multiclass():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + np.eye(3)[y] * 1.2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_single_label_against_sklearn(multiclass):
    y, p = multiclass
    pred = p.argmax(1)
    m = single_label_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for c, name in enumerate("abc"):
        assert m[f"f1/{name}"] == pytest.approx(skm.f1_score(y == c, pred == c))
        assert m[f"auroc/{name}"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]))
    assert confusion_matrix(y, pred, 3).tolist() == skm.confusion_matrix(y, pred).tolist()


def test_binary_auroc_and_ap_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    assert auroc_binary(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert average_precision_binary(y, s) == pytest.approx(skm.average_precision_score(y, s))
    assert np.isnan(auroc_binary(np.ones(5), np.arange(5)))
    p = np.c_[1 - s / 2, s / 2]
    m = single_label_metrics(y, p, ["neg", "pos"])
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))


def test_multilabel_masks_nan_labels():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (150, 4)).astype(float)
    p = np.clip(y * 0.3 + rng.random((150, 4)) * 0.7, 0, 1)
    y[rng.random((150, 4)) < 0.2] = np.nan
    m = multilabel_metrics(y, p, list("wxyz"))
    per_class = []
    for c, name in enumerate("wxyz"):
        known = ~np.isnan(y[:, c])
        want = skm.roc_auc_score(y[known, c], p[known, c])
        assert m[f"auroc/{name}"] == pytest.approx(want)
        assert m[f"f1/{name}"] == pytest.approx(skm.f1_score(y[known, c], p[known, c] >= 0.5))
        per_class.append(want)
    assert m["auroc"] == pytest.approx(np.mean(per_class))


def test_bootstrap_is_seeded_and_brackets_the_estimate(multiclass):
    y, p = multiclass

    def fn(a, b):
        return single_label_metrics(a, b, list("abc"))

    ci1 = bootstrap_ci(fn, (y, p), n_resamples=200, seed=7, keys=["accuracy", "auroc"])
    ci2 = bootstrap_ci(fn, (y, p), n_resamples=200, seed=7, keys=["accuracy", "auroc"])
    assert ci1 == ci2
    m = fn(y, p)
    for k in ("accuracy", "auroc"):
        lo, hi = ci1[k]
        assert lo < m[k] < hi and hi - lo < 0.3


def test_evaluate_probs_single_and_multi(multiclass):
    y, p = multiclass
    ev = evaluate_probs(np.eye(3)[y], p, list("abc"), multilabel=False, n_bootstrap=50)
    assert ev.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert np.asarray(ev.confusion_matrix).sum() == len(y) and "macro_f1" in ev.ci
    ev = evaluate_probs(np.eye(3)[y], p, list("abc"), multilabel=True, n_bootstrap=0)
    assert ev.ci == {} and ev.confusion_matrix is None and "auroc/a" in ev.metrics
