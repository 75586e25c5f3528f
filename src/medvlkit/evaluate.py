"""Scoring predictions against labels: metrics, bootstrap CIs and the confusion matrix in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvlkit.data.adapters.csv_labels import read_csv_rows
from medvlkit.errors import MedvlkitError
from medvlkit.metrics import bootstrap_ci, confusion_matrix, multilabel_metrics, single_label_metrics

# Metrics whose CIs are reported by default (per-class CIs would multiply the bootstrap cost for no reader).
CI_KEYS_SINGLE = ["accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "auroc",
                  "average_precision"]
CI_KEYS_MULTI = ["auroc", "average_precision", "macro_f1", "macro_precision", "macro_recall", "macro_accuracy"]


@dataclass
class Evaluation:
    """Metrics of one set of predictions."""

    metrics: dict[str, float]
    ci: dict[str, list[float]]
    confusion_matrix: list[list[int]] | None = None
    extra: dict = field(default_factory=dict)


def evaluate_probs(labels: np.ndarray, probs: np.ndarray, classnames: list[str], multilabel: bool,
                   n_bootstrap: int = 1000, seed: int = 0, decisions: np.ndarray | None = None,
                   thresholds: np.ndarray | float = 0.5) -> Evaluation:
    """Score (N, C) probabilities against (N, C) labels (one-hot for single-label; 1/0/NaN multi-label).

    Args:
        n_bootstrap: bootstrap resamples for the 95% CIs (0 disables them).
        seed: the bootstrap's seed.
        decisions: single-label predicted class indices (N,) when not the argmax (validation thresholds).
        thresholds: multi-label per-class decision thresholds.
    """
    if labels.shape != probs.shape:
        raise MedvlkitError(f"labels {labels.shape} and predictions {probs.shape} do not align")
    if len(labels) == 0:
        raise MedvlkitError("nothing to evaluate: no labelled predictions")
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise MedvlkitError(f"{int(bad.sum())} of {len(probs)} predictions hold NaN or infinite scores (first: row "
                            f"{int(np.flatnonzero(bad)[0])}); metrics of such scores mean nothing: fix the model or "
                            "the predictions file")
    if not multilabel:
        one = np.nan_to_num(labels, nan=0.0)
        bad = ~((one == 1).sum(axis=1) == 1) | ~np.isin(one, (0, 1)).all(axis=1)
        if bad.any():
            raise MedvlkitError(f"{int(bad.sum())} single-label rows do not hold exactly one true class (first: row "
                                f"{int(np.flatnonzero(bad)[0])}); score multi-label data as multi-label")
    if multilabel:
        def fn(y, p):
            return multilabel_metrics(y, p, classnames, thresholds)
        arrays, keys, cm = (labels, probs), CI_KEYS_MULTI, None
    else:
        y = np.nanargmax(labels, axis=1)
        d = probs.argmax(1) if decisions is None else np.asarray(decisions, dtype=int)

        def fn(y, p, d):
            return single_label_metrics(y, p, classnames, d)
        arrays, keys = (y, probs, d), CI_KEYS_SINGLE
        cm = confusion_matrix(y, d, len(classnames)).tolist()
    metrics = fn(*arrays)
    ci = bootstrap_ci(fn, arrays, n_bootstrap, seed, keys=keys) if n_bootstrap > 0 else {}
    return Evaluation(metrics, ci, cm)


def read_prediction_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """A predictions CSV: a ``file`` column and ``prob_<class>`` columns. Returns files, classes, (N, C)."""
    if not path.is_file():
        raise MedvlkitError(f"--predictions {path}: no such file")
    header, rows = read_csv_rows(path)
    pcols = [c for c in header if c.startswith("prob_")]
    if "file" not in header or not pcols:
        raise MedvlkitError(f"--predictions {path}: needs a 'file' column and 'prob_<class>' columns "
                            f"(as medvlkit's predictions.csv has); its columns: {', '.join(header)}")
    try:
        probs = np.array([[float(r[c]) for c in pcols] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise MedvlkitError(f"--predictions {path}: non-numeric probability ({err})") from None
    return [r["file"] for r in rows], [c[5:] for c in pcols], probs


def read_label_csv(path: Path, classnames: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """A labels CSV: ``file`` plus either a ``label`` column of class names (single-label) or one 0/1/blank
    column per class (multi-label). Returns {file: (C,) label row}, multilabel."""
    if not path.is_file():
        raise MedvlkitError(f"--labels {path}: no such file")
    header, rows = read_csv_rows(path)
    if "file" not in header:
        raise MedvlkitError(f"--labels {path}: needs a 'file' column; its columns: {', '.join(header)}")
    if "label" in header:
        index = {c: i for i, c in enumerate(classnames)}
        unknown = sorted({r["label"] for r in rows} - set(index))
        if unknown:
            raise MedvlkitError(f"--labels {path}: label(s) {unknown} are not among the predicted classes {classnames}")
        return {r["file"]: np.eye(len(classnames))[index[r["label"]]] for r in rows}, False
    missing = [c for c in classnames if c not in header]
    if missing:
        raise MedvlkitError(f"--labels {path}: needs a 'label' column or one column per class; missing {missing}")
    return {r["file"]: np.array([float(r[c]) if r[c].strip() else np.nan for c in classnames]) for r in rows}, True


def evaluate_csv(predictions: Path, labels: Path, n_bootstrap: int = 1000, seed: int = 0,
                 multilabel: bool | None = None) -> tuple[Evaluation, list[str], int]:
    """Score a predictions CSV against a labels CSV, joined on ``file``.

    Returns:
        the evaluation, the class names, and the number of predictions without a label (left out).
    """
    files, classnames, probs = read_prediction_csv(Path(predictions))
    table, is_multi = read_label_csv(Path(labels), classnames)
    keep = [i for i, f in enumerate(files) if f in table]
    if not keep:
        raise MedvlkitError(f"no file of {predictions} appears in {labels}; both need the same 'file' values")
    y = np.stack([table[files[i]] for i in keep])
    multilabel = is_multi if multilabel is None else multilabel
    return evaluate_probs(y, probs[keep], classnames, multilabel, n_bootstrap, seed), classnames, len(files) - len(keep)
