"""Calibration fitted on validation predictions only, and applied to other predictions as a separate step.

- temperature scaling (Guo et al. 2017): one temperature for softmax outputs, or one per class for
  multi-label (pos_neg) outputs, fitted by minimising the validation negative log-likelihood;
- per-class decision thresholds: Youden's J, or the highest threshold reaching a target sensitivity;
- expected calibration error (ECE, equal-width bins) and reliability-diagram data.

Arrays in, arrays out: reading and writing prediction files is ``calibration_task.py``'s job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from medvlkit.engine.labels import canonical_class
from medvlkit.engine.scores import log1mexp, log_sigmoid, log_softmax, logit_from_log_prob
from medvlkit.errors import MedvlkitError, first_line

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "sensitivity", "none")


@dataclass
class Calibration:
    """What was fitted on validation data. Saved as JSON with the run; applied with :func:`apply_calibration`.

    Attributes:
        classnames: class order of the probabilities it applies to.
        multilabel: True for per-class sigmoid-style probabilities (pos_neg), False for one softmax.
        temperatures: one value (softmax) or one per class (multi-label); 1.0 means unchanged.
        thresholds: per-class decision thresholds on calibrated probabilities (empty: argmax / 0.5).
        threshold_method: youden, sensitivity or none; target_sensitivity for ``sensitivity``.
        fitted_on: the validation predictions file and its size, for the record.
        conformal_level: the coverage of the prediction-set rule (None: no rule); conformal_mode: marginal or
            class; conformal_q: its quantile(s), on the model's own (not re-tempered) probabilities
            (:mod:`medvlkit.engine.conformal`).
    """

    classnames: list[str]
    multilabel: bool
    temperatures: list[float]
    thresholds: list[float] = field(default_factory=list)
    threshold_method: str = "none"
    target_sensitivity: float | None = None
    fitted_on: dict = field(default_factory=dict)
    conformal_level: float | None = None
    conformal_mode: str | None = None
    conformal_q: list[float] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        if not Path(path).is_file():
            raise MedvlkitError(f"--calibration {path}: no such file (write one with `medvlkit calibrate`)")
        try:
            cal = cls(**json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise MedvlkitError(f"--calibration {path}: not a calibration.json written by `medvlkit calibrate` "
                                f"({first_line(err)})") from None
        if len(cal.temperatures) not in (1, len(cal.classnames)) or (cal.thresholds and
                                                                      len(cal.thresholds) != len(cal.classnames)):
            raise MedvlkitError(f"--calibration {path}: its temperatures/thresholds do not match its classes")
        if cal.conformal_level is not None and len(cal.conformal_q) not in (1, len(cal.classnames)):
            raise MedvlkitError(f"--calibration {path}: its prediction-set quantiles do not match its classes")
        return cal


def scale_softmax(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax log-probabilities re-tempered: log softmax(log p / T). (N, C) -> (N, C), float64."""
    return log_softmax(np.asarray(log_probs, dtype=np.float64) / temperature)


def scale_binary(log_p: np.ndarray, temperature: float) -> np.ndarray:
    """Binary log-probabilities re-tempered: log sigmoid(logit(p) / T), computed from log p without rounding."""
    return log_sigmoid(logit_from_log_prob(log_p) / temperature)


def fit_temperature(nll) -> float:
    """The temperature in [0.05, 20] minimising ``nll(T)`` (bounded scalar search on log T)."""
    res = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin-size-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count (the data of a reliability diagram)."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["confidence"].append(float(confidence[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
        out["count"].append(int(m.sum()))
    return out


def calibration_error(labels: np.ndarray, probs: np.ndarray, multilabel: bool, n_bins: int = 15) -> float:
    """Top-label ECE for single-label data; mean per-class ECE (NaN labels masked) for multi-label data."""
    if not multilabel:
        y = np.nanargmax(labels, axis=1)
        return expected_calibration_error(probs.max(1), (probs.argmax(1) == y).astype(float), n_bins)
    eces = []
    for c in range(probs.shape[1]):
        known = ~np.isnan(labels[:, c])
        if known.any():
            eces.append(expected_calibration_error(probs[known, c], labels[known, c], n_bins))
    return float(np.mean(eces))


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    best, best_t = -np.inf, 0.5
    for t in np.unique(score):
        pred = score >= t
        j = pred[y].mean() + (~pred[~y]).mean() - 1 if y.any() and (~y).any() else -np.inf
        if j > best:
            best, best_t = j, float(t)
    return best_t


def sensitivity_threshold(y: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``."""
    pos = np.sort(score[y])[::-1]
    if len(pos) == 0:
        raise MedvlkitError("a class has no positive validation example: cannot reach a target sensitivity")
    k = int(np.ceil(target * len(pos))) - 1
    return float(pos[max(k, 0)])


def fit_calibration(labels: np.ndarray, log_probs: np.ndarray, classnames: list[str], multilabel: bool,
                    threshold_method: str = "youden", target_sensitivity: float = 0.9) -> Calibration:
    """Fit temperatures and per-class thresholds on validation labels (N, C) and log-probabilities (N, C)."""
    if threshold_method not in THRESHOLD_METHODS:
        raise MedvlkitError(f"--thresholds {threshold_method}: valid options: {', '.join(THRESHOLD_METHODS)}")
    if not 0 < target_sensitivity <= 1:
        raise MedvlkitError(f"--target-sensitivity {target_sensitivity} must be in (0, 1]")
    if multilabel:
        temps = []
        for c in range(log_probs.shape[1]):
            known = ~np.isnan(labels[:, c])
            y, lp = labels[known, c], log_probs[known, c]
            temps.append(fit_temperature(lambda t, y=y, lp=lp: _binary_nll(y, scale_binary(lp, t))))
        scaled = np.stack([scale_binary(log_probs[:, c], t) for c, t in enumerate(temps)], axis=1)
    else:
        y_idx = np.nanargmax(labels, axis=1)
        rows = np.arange(len(y_idx))
        temps = [fit_temperature(lambda t: -np.mean(scale_softmax(log_probs, t)[rows, y_idx]))]
        scaled = scale_softmax(log_probs, temps[0])
    thresholds = []
    if threshold_method != "none":
        for c in range(log_probs.shape[1]):
            known = ~np.isnan(labels[:, c])
            y, s = labels[known, c] == 1, scaled[known, c]
            t = youden_threshold(y, s) if threshold_method == "youden" else sensitivity_threshold(y, s,
                                                                                                  target_sensitivity)
            thresholds.append(float(np.exp(t)))  # stored as a probability; compared in log space
    return Calibration(list(classnames), multilabel, temps, thresholds, threshold_method,
                       target_sensitivity if threshold_method == "sensitivity" else None)


def _binary_nll(y: np.ndarray, log_p: np.ndarray) -> float:
    return float(-np.mean(y * log_p + (1 - y) * log1mexp(log_p)))


def apply_calibration(cal: Calibration, log_probs: np.ndarray, classnames: list[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated log-probabilities and decisions for new predictions (columns in ``cal.classnames`` order).

    Returns:
        (log_probs (N, C), decisions): for single-label, decisions (N,) is the class index (argmax of probability
        over threshold when thresholds were fitted); for multi-label, (N, C) booleans.
    """
    if [canonical_class(c) for c in classnames] != [canonical_class(c) for c in cal.classnames]:
        raise MedvlkitError(f"the calibration was fitted for classes {cal.classnames}, these predictions have "
                            f"{list(classnames)}")
    with np.errstate(divide="ignore"):
        log_thr = np.log(np.asarray(cal.thresholds, dtype=np.float64)) if cal.thresholds else None
    if cal.multilabel:
        scaled = np.stack([scale_binary(log_probs[:, c], t) for c, t in enumerate(cal.temperatures)], axis=1)
        return scaled, scaled >= (log_thr if log_thr is not None else np.log(0.5))
    scaled = scale_softmax(log_probs, cal.temperatures[0])
    if log_thr is not None and len(classnames) == 2:  # binary: the positive (second) class's threshold decides
        return scaled, (scaled[:, 1] >= log_thr[1]).astype(int)
    if log_thr is not None:
        # one threshold per class: pick the class whose probability clears its threshold by the widest ratio
        return scaled, (scaled - log_thr).argmax(1)
    return scaled, scaled.argmax(1)


def confidence_and_correct(labels: np.ndarray, probs: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) pairs for reliability diagrams: top label, or every known class cell."""
    if not multilabel:
        return probs.max(1), (probs.argmax(1) == np.nanargmax(labels, 1)).astype(float)
    known = ~np.isnan(labels)
    return probs[known], labels[known]
