"""Split conformal prediction sets for single-label classification, from arrays (no file IO).

Fitted on labelled VALIDATION probabilities, a rule gives each new image the set of classes whose probability is at
least ``1 - q``; over images exchangeable with the validation ones, the set holds the true class with probability at
least ``level`` (Vovk et al. 2005; the "LAC" score of Sadinle, Lei & Wasserman 2019):

- marginal: one ``q``, the ``ceil((n + 1) * level) / n`` empirical quantile ("higher") of the validation scores
  ``1 - p(true class)`` -- the guarantee holds on average over images;
- class-conditional (Mondrian): one ``q`` per true class from that class's validation images only -- the guarantee
  holds for each class, at the cost of larger sets for hard classes.

When a class has too few validation images for its quantile (``ceil((n + 1) * level) > n``) its ``q`` is 1: every
class enters the set, which keeps the guarantee (nothing is promised that the data cannot back).

The score function must not depend on the validation data: sets are made from the model's own probabilities, not
from probabilities re-tempered on the same validation images.
"""

from __future__ import annotations

import numpy as np

from medvlkit.engine.bootstrap import resample_weights
from medvlkit.engine.metrics import percentile_ci
from medvlkit.errors import MedvlkitError

MODES = ("marginal", "class")


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true class index (N,), probabilities (N, C)) of one-hot single-label data."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise MedvlkitError(f"conformal: labels {labels.shape} and probabilities {probs.shape} must be (N, C) alike")
    one = np.nan_to_num(labels)
    if not ((one == 1).sum(1) == 1).all():
        raise MedvlkitError("conformal prediction sets are for single-label data (one true class per image); for "
                            "multi-label data use per-class thresholds (calibrate --thresholds)")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise MedvlkitError("conformal: probabilities must be finite and within [0, 1]")
    return one.argmax(1), probs


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level) / n`` empirical quantile of ``scores`` (the smallest score with at least that
    many at or below it); 1.0 (every class) when ``n`` is too small for it."""
    n = len(scores)
    k = int(np.ceil((n + 1) * level - 1e-9))
    if n == 0 or k > n:
        return 1.0
    return float(np.sort(scores)[k - 1])


def fit_conformal(labels: np.ndarray, probs: np.ndarray, level: float, mode: str = "marginal") -> list[float]:
    """The set rule's ``q``: one value (marginal) or one per class (class-conditional), from validation (N, C)
    one-hot labels and probabilities.

    Raises:
        MedvlkitError: a level outside (0, 1), an unknown mode, or labels that are not single-label.
    """
    if not 0 < level < 1:
        raise MedvlkitError(f"--conformal {level}: the coverage level must be in (0, 1), e.g. 0.9")
    if mode not in MODES:
        raise MedvlkitError(f"--conformal-mode {mode}: valid: {', '.join(MODES)}")
    y, p = _check(labels, probs)
    scores = 1.0 - p[np.arange(len(y)), y]
    if mode == "marginal":
        return [conformal_quantile(scores, level)]
    return [conformal_quantile(scores[y == c], level) for c in range(p.shape[1])]


def prediction_sets(probs: np.ndarray, q: list[float] | np.ndarray) -> np.ndarray:
    """(N, C) booleans: class c is in an image's set when ``1 - p_c <= q`` (``q`` of class c when per class)."""
    p = np.asarray(probs, dtype=float)
    q = np.broadcast_to(np.asarray(q, dtype=float), (p.shape[1],))
    return (1.0 - p) <= q[None, :] + 1e-12


def coverage_report(labels: np.ndarray, sets: np.ndarray, classnames: list[str], n_bootstrap: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> dict:
    """Empirical coverage (the share of sets holding the true class) and mean set size, overall and per true class,
    with percentile bootstrap CIs (the resamples of every other interval in medvlkit), and the share of empty
    sets."""
    y, _ = _check(labels, sets.astype(float))
    sets = np.asarray(sets, dtype=bool)
    covered = sets[np.arange(len(y)), y].astype(np.float64)
    size = sets.sum(1).astype(np.float64)
    out: dict = {"n": len(y), "coverage": float(covered.mean()), "mean_set_size": float(size.mean()),
                 "empty_sets": float((size == 0).mean()), "ci": {}, "per_class": {}}
    onehot = np.eye(sets.shape[1])[y]  # (N, C): per-class sums in one product
    basis = np.concatenate([covered[:, None], size[:, None], onehot * covered[:, None], onehot * size[:, None],
                            onehot], axis=1)
    if n_bootstrap:
        sums = np.concatenate([w.T.astype(np.float64) @ basis for w in resample_weights(len(y), n_bootstrap, seed)])
        n_c = sets.shape[1]
        total = sums[:, [0, 1]] / len(y)
        counts = sums[:, 2 + 2 * n_c:]
        with np.errstate(invalid="ignore", divide="ignore"):
            cov_c, size_c = sums[:, 2:2 + n_c] / counts, sums[:, 2 + n_c:2 + 2 * n_c] / counts
        out["ci"] = percentile_ci({"coverage": total[:, 0], "mean_set_size": total[:, 1]}, alpha)
    for c, name in enumerate(classnames):
        m = y == c
        row: dict = {"n": int(m.sum()), "coverage": float(covered[m].mean()) if m.any() else None,
                     "mean_set_size": float(size[m].mean()) if m.any() else None}
        if n_bootstrap and m.any():
            row["ci"] = percentile_ci({"coverage": cov_c[:, c], "mean_set_size": size_c[:, c]}, alpha)
        out["per_class"][name] = row
    return out
