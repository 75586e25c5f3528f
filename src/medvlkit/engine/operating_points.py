"""Operating points a clinical reader asks for, computed from arrays (no file IO): sensitivity at a fixed specificity
(and specificity at a fixed sensitivity) with the threshold chosen on VALIDATION scores and then applied to test
scores, predictive values at a stated prevalence, and decision-curve net benefit.

The threshold that reaches a target on the test data itself is never computed: a deployment would not have it, so a
number reported with it would be better than what the model delivers. A positive call is ``score >= threshold``.

Bootstrap intervals of the test rates reuse :func:`medvlkit.engine.bootstrap.resample_weights` (the resamples of every
other interval in medvlkit, seeded the same way): at a fixed threshold each rate is a ratio of weighted counts, so all
resamples of all classes come from one matrix product per chunk.
"""

from __future__ import annotations

import numpy as np

from medvlkit.engine.bootstrap import resample_weights
from medvlkit.engine.metrics import percentile_ci
from medvlkit.errors import MedvlkitError


def _check(y: np.ndarray, score: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    if y.shape != score.shape or y.ndim != 1:
        raise MedvlkitError(f"{what}: labels and scores must be 1-d arrays of one length, got {y.shape} and "
                            f"{score.shape}")
    known = ~np.isnan(y)  # multi-label data leaves unknown labels as NaN: they count nowhere
    y, score = y[known], score[known]
    if not np.isin(y, (0.0, 1.0)).all() or not np.isfinite(score).all():
        raise MedvlkitError(f"{what}: labels must be 0/1 (or NaN for unknown) and scores finite")
    if y.sum() == 0 or y.sum() == len(y):
        raise MedvlkitError(f"{what}: needs positives and negatives (got {int(y.sum())} positives of {len(y)})")
    return y.astype(bool), score


def threshold_at_specificity(y_val: np.ndarray, score_val: np.ndarray, target: float) -> float:
    """The lowest threshold whose specificity on the validation data is at least ``target`` (the most sensitive
    operating point that keeps it): ``inf`` when no finite one does."""
    y, s = _check(y_val, score_val, "threshold at specificity")
    if not 0 < target <= 1:
        raise MedvlkitError(f"specificity target {target}: must be in (0, 1]")
    negatives = np.sort(s[~y])
    candidates = np.append(np.unique(s), np.inf)
    spec = np.searchsorted(negatives, candidates, side="left") / len(negatives)  # negatives below each threshold
    return float(candidates[np.argmax(spec >= target - 1e-12)])


def threshold_at_sensitivity(y_val: np.ndarray, score_val: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on the validation data is at least ``target`` (the most specific
    operating point that keeps it)."""
    y, s = _check(y_val, score_val, "threshold at sensitivity")
    if not 0 < target <= 1:
        raise MedvlkitError(f"sensitivity target {target}: must be in (0, 1]")
    positives = np.sort(s[y])
    candidates = np.unique(s)
    sens = 1 - np.searchsorted(positives, candidates, side="left") / len(positives)  # positives at or above
    return float(candidates[np.nonzero(sens >= target - 1e-12)[0][-1]])


def rates(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of ``score >= threshold`` on (y, score); NaN where undefined."""
    yb, s = _check(y, score, "rates")
    call = s >= threshold
    tp, fn = float((call & yb).sum()), float((~call & yb).sum())
    fp, tn = float((call & ~yb).sum()), float((~call & ~yb).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn)}


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV at a stated ``prevalence`` (Bayes' rule), for a population whose prevalence is not the test
    set's."""
    if not 0 < prevalence < 1:
        raise MedvlkitError(f"prevalence {prevalence}: must be in (0, 1)")
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return (tp / (tp + fp) if tp + fp else float("nan")), (tn / (tn + fn) if tn + fn else float("nan"))


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Decision-curve analysis (Vickers & Elkin 2006): at each threshold probability p_t, the net benefit of treating
    the images with ``prob >= p_t``, TP/n - FP/n * p_t / (1 - p_t), beside treating all and treating none (0)."""
    yb, p = _check(y, prob, "net benefit")
    t = np.asarray(thresholds, dtype=float)
    if ((t <= 0) | (t >= 1)).any():
        raise MedvlkitError("net benefit thresholds must be probabilities strictly between 0 and 1")
    n, odds = len(yb), t / (1 - t)
    calls = p[None, :] >= t[:, None]
    tp, fp = (calls & yb).sum(1) / n, (calls & ~yb).sum(1) / n
    prevalence = yb.mean()
    return {"threshold": t, "model": tp - fp * odds, "treat_all": prevalence - (1 - prevalence) * odds,
            "treat_none": np.zeros_like(t)}


def operating_points(y_val: np.ndarray, score_val: np.ndarray, y_test: np.ndarray, score_test: np.ndarray,
                     specificities: tuple[float, ...] = (0.9, 0.95), sensitivities: tuple[float, ...] = (0.9, 0.95),
                     prevalence: float | None = None, n_bootstrap: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> list[dict]:
    """For each target, the threshold chosen on validation and the test rates it gives, with bootstrap CIs.

    Args:
        y_val: validation labels of one class (0/1, NaN unknown): where thresholds are chosen.
        score_val: the validation scores of that class.
        y_test: the test labels they are applied to: what is reported.
        score_test: the test scores.
        specificities: "sensitivity at specificity X" targets; sensitivities: "specificity at sensitivity X".
        prevalence: also PPV and NPV at this prevalence (Bayes' rule on the test sensitivity and specificity).

    Returns:
        one dict per target: ``target`` ("specificity" or "sensitivity"), ``level``, ``threshold``, the validation
        rates reached (``val_sensitivity``, ``val_specificity``), the test rates (``sensitivity``, ``specificity``,
        ``ppv``, ``npv``) and ``ci`` ({rate: [low, high]}).
    """
    y_t, s_t = _check(y_test, score_test, "operating points (test)")
    chosen = [("specificity", lv, threshold_at_specificity(y_val, score_val, lv)) for lv in specificities] + \
             [("sensitivity", lv, threshold_at_sensitivity(y_val, score_val, lv)) for lv in sensitivities]
    out = []
    thresholds = np.array([t for _, _, t in chosen])
    cis = _bootstrap_rates(y_t, s_t, thresholds, n_bootstrap, seed, alpha) if n_bootstrap else [{}] * len(chosen)
    for (target, level, t), ci in zip(chosen, cis):
        val = rates(y_val, score_val, t)
        test = rates(y_t.astype(float), s_t, t)
        row = {"target": target, "level": level, "threshold": t, "val_sensitivity": val["sensitivity"],
               "val_specificity": val["specificity"]} | test | {"ci": ci}
        if prevalence is not None:
            row["prevalence"] = prevalence
            row["ppv_at_prevalence"], row["npv_at_prevalence"] = predictive_values(
                test["sensitivity"], test["specificity"], prevalence)
        out.append(row)
    return out


def _bootstrap_rates(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray, n_resamples: int, seed: int,
                     alpha: float) -> list[dict[str, list[float]]]:
    """Percentile CIs of sensitivity, specificity, PPV and NPV at each fixed threshold, all resamples at once."""
    calls = score[:, None] >= thresholds[None, :]  # (n, T)
    pos = y[:, None]
    basis = np.concatenate([calls & pos, ~calls & pos, calls & ~pos, ~calls & ~pos], axis=1).astype(np.float64)
    counts = np.concatenate([w.T.astype(np.float64) @ basis for w in resample_weights(len(y), n_resamples, seed)])
    k = len(thresholds)
    tp, fn, fp, tn = (counts[:, i * k:(i + 1) * k] for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
                   "npv": tn / (tn + fn)}
    return [percentile_ci({name: v[:, j] for name, v in samples.items()}, alpha) for j in range(k)]


def class_columns(labels: np.ndarray, scores: np.ndarray, multilabel: bool, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``c`` as a binary task: its 0/1 labels (NaN unknown, multi-label) and its scores, one-vs-rest for
    single-label data (the class's own probability column). The one way every per-class clinical figure reads a
    class, so operating points, decision curves and subgroups agree on it."""
    y = np.asarray(labels, dtype=float)[:, c]
    if not multilabel:
        y = np.nan_to_num(y, nan=0.0)
    return y, np.asarray(scores, dtype=float)[:, c]


def usable_class(y: np.ndarray) -> str | None:
    """Why class labels ``y`` (0/1/NaN) cannot carry an operating point, or None when they can."""
    known = y[~np.isnan(y)]
    if known.sum() == 0:
        return "no positive example"
    if known.sum() == len(known):
        return "no negative example"
    return None


def per_class_operating_points(val_labels: np.ndarray, val_scores: np.ndarray, test_labels: np.ndarray,
                               test_scores: np.ndarray, classnames: list[str], multilabel: bool,
                               specificities: tuple[float, ...] = (0.9, 0.95),
                               sensitivities: tuple[float, ...] = (0.9, 0.95), prevalence: float | None = None,
                               n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """:func:`operating_points` for every class of (N, C) validation and test labels and scores (columns in
    ``classnames`` order; scores may be log-probabilities: thresholds are then log-probabilities too).

    Returns:
        ``{"classes": {name: [rows]}, "not_scored": {name: reason}}``: a class whose validation or test part has
        no positive or no negative example is listed, not scored.
    """
    out: dict = {"classes": {}, "not_scored": {}}
    for c, name in enumerate(classnames):
        yv, sv = class_columns(val_labels, val_scores, multilabel, c)
        yt, st = class_columns(test_labels, test_scores, multilabel, c)
        reason = usable_class(yv)
        reason = f"validation: {reason}" if reason else (f"test: {usable_class(yt)}" if usable_class(yt) else None)
        if reason:
            out["not_scored"][name] = reason
            continue
        out["classes"][name] = operating_points(yv, sv, yt, st, specificities, sensitivities, prevalence,
                                                n_bootstrap, seed)
    return out
