"""Classification metrics as pure functions on arrays, returning flat dicts with stable keys.

Single-label: ``y_true`` (N,) int class indices, ``probs`` (N, C). Multi-label: ``labels`` (N, C) of 1/0/NaN,
``probs`` (N, C); NaN labels are masked per class. ``probs`` may be any per-class monotone transform of the
probabilities (medvlkit passes float64 log-probabilities, with thresholds in the same space). Checked against
scikit-learn in the tests.

One rule for classes that cannot be scored: a class enters the macro means only when its known labels hold at
least one positive (single-label: support > 0). Its per-class precision/recall/F1/accuracy are NaN otherwise, and
``n_classes_scored`` counts the classes that entered. A metric that is undefined for an entering class (AUROC of
a class with no known negative) is left out of that metric's mean alone.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def auroc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); NaN when only one class is present."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_clf_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positive counts at each distinct score, from the highest score down."""
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, t = np.asarray(score)[order], np.asarray(y, dtype=bool)[order]
    last = np.r_[np.where(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    return tps, (last + 1) - tps


def average_precision_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision as scikit-learn defines it (step-wise, one point per distinct score)."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return float("nan")
    tps, fps = binary_clf_curve(y, score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1; 0 where undefined (scikit-learn's zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


def single_label_metrics(y_true: np.ndarray, probs: np.ndarray, classnames: list[str],
                         y_pred: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1/AUROC/AP.

    ``auroc`` is the positive-class AUROC for two classes and the macro one-vs-rest AUROC otherwise
    (classes absent from ``y_true`` are left out of the macro means of AUROC and AP). Decisions are
    ``y_pred`` when given (e.g. after validation-chosen thresholds), else the argmax of ``probs``.
    """
    y_true = np.asarray(y_true, dtype=int)
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=int)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    precision, recall, f1 = _prf(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    present = cm.sum(1) > 0
    precision, recall, f1 = (np.where(present, v, np.nan) for v in (precision, recall, f1))
    aurocs = np.array([auroc_binary(y_true == c, probs[:, c]) for c in range(n_classes)])
    aps = np.array([average_precision_binary(y_true == c, probs[:, c]) for c in range(n_classes)])
    out = {
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "balanced_accuracy": _nanmean(recall),
        "macro_precision": _nanmean(precision),
        "macro_recall": _nanmean(recall),
        "macro_f1": _nanmean(f1),
        "auroc": float(aurocs[1]) if n_classes == 2 else _nanmean(aurocs),
        "average_precision": float(aps[1]) if n_classes == 2 else _nanmean(aps),
        "n": int(len(y_true)),
        "n_classes_scored": int(present.sum()),
    }
    for c, name in enumerate(classnames):
        out |= {f"precision/{name}": float(precision[c]), f"recall/{name}": float(recall[c]),
                f"f1/{name}": float(f1[c]), f"auroc/{name}": float(aurocs[c]), f"support/{name}": int(cm[c].sum())}
    return out


def multilabel_metrics(labels: np.ndarray, probs: np.ndarray, classnames: list[str],
                       thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """Per-class and macro AUROC, AP, precision/recall/F1 and accuracy at ``thresholds``; NaN labels masked."""
    labels = np.asarray(labels, dtype=float)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=float), (probs.shape[1],))
    out: dict[str, float] = {}
    cols: dict[str, list[float]] = {k: [] for k in ("auroc", "average_precision", "precision", "recall", "f1",
                                                   "accuracy")}
    for c, name in enumerate(classnames):
        known = ~np.isnan(labels[:, c])
        y, p = labels[known, c] == 1, probs[known, c]
        pred = p >= thr[c]
        tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
        pr, rc, f1 = (float(v[0]) for v in _prf(np.array([tp], float), np.array([fp], float), np.array([fn], float)))
        scored = bool(y.any())
        vals = {"auroc": auroc_binary(y, p), "average_precision": average_precision_binary(y, p),
                "precision": pr if scored else float("nan"), "recall": rc if scored else float("nan"),
                "f1": f1 if scored else float("nan"),
                "accuracy": float(np.mean(pred == y)) if scored else float("nan")}
        for k, v in vals.items():
            out[f"{k}/{name}"] = v
            cols[k].append(v)
        out[f"support/{name}"] = int(y.sum())
    for k, column in cols.items():
        out[f"macro_{k}" if k not in ("auroc", "average_precision") else k] = _nanmean(np.array(column))
    out["n"] = int(len(labels))
    out["n_classes_scored"] = int(np.sum(~np.isnan(np.array(cols["recall"]))))
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def bootstrap_ci(metric_fn, arrays: tuple[np.ndarray, ...], n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05, keys: list[str] | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of every scalar metric ``metric_fn(*arrays)`` returns.

    Args:
        metric_fn: e.g. ``lambda y, p: single_label_metrics(y, p, names)``.
        arrays: arrays resampled together along axis 0.
        n_resamples: bootstrap resamples (seeded by ``seed``: the same call gives the same CI).
        alpha: 0.05 gives 95% intervals.
        keys: which metrics to bootstrap (default: all float-valued ones except ``n``/``support/*``).

    Returns:
        ``{metric: [low, high]}``; resamples where a metric is undefined (NaN) are left out.
    """
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    base = metric_fn(*arrays)
    keys = keys or [k for k, v in base.items() if k != "n" and not k.startswith("support/") and isinstance(v, float)]
    samples: dict[str, list] = {k: [] for k in keys}
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        m = metric_fn(*(a[idx] for a in arrays))
        for k in keys:
            samples[k].append(m[k])
    return percentile_ci({k: np.asarray(v, dtype=float) for k, v in samples.items()}, alpha)


def percentile_ci(samples: dict[str, np.ndarray], alpha: float = 0.05) -> dict[str, list[float]]:
    """``{metric: [low, high]}`` percentile intervals over each metric's non-NaN resample values (NaN when there
    are none)."""
    out = {}
    for k, v in samples.items():
        v = v[~np.isnan(v)]
        out[k] = [float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))] if len(v) else [
            float("nan"), float("nan")]
    return out
