"""Calibration fitted on validation predictions only, and applied to other predictions as a separate step.

- temperature scaling (Guo et al. 2017): one temperature for softmax outputs, or one per class for
  multi-label (pos_neg) outputs, fitted by minimising the validation negative log-likelihood;
- per-class decision thresholds: Youden's J, or the highest threshold reaching a target sensitivity;
- expected calibration error (ECE, equal-width bins) and reliability-diagram data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from medvlkit.errors import MedvlkitError

EPS = 1e-7
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
    """

    classnames: list[str]
    multilabel: bool
    temperatures: list[float]
    thresholds: list[float] = field(default_factory=list)
    threshold_method: str = "none"
    target_sensitivity: float | None = None
    fitted_on: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        if not Path(path).is_file():
            raise MedvlkitError(f"--calibration {path}: no such file (write one with `medvlkit calibrate`)")
        return cls(**json.loads(Path(path).read_text()))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def scale_softmax(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities re-tempered: softmax(log p / T). (N, C) -> (N, C)."""
    z = np.log(np.clip(probs, EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def scale_binary(p: np.ndarray, temperature: float) -> np.ndarray:
    """Binary probabilities re-tempered: sigmoid(logit p / T)."""
    return 1.0 / (1.0 + np.exp(-_logit(p) / temperature))


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
    out = {"confidence": [], "accuracy": [], "count": []}
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


def fit_calibration(labels: np.ndarray, probs: np.ndarray, classnames: list[str], multilabel: bool,
                    threshold_method: str = "youden", target_sensitivity: float = 0.9) -> Calibration:
    """Fit temperatures and per-class thresholds on validation labels (N, C) and probabilities (N, C)."""
    if threshold_method not in THRESHOLD_METHODS:
        raise MedvlkitError(f"--thresholds {threshold_method}: valid options: {', '.join(THRESHOLD_METHODS)}")
    if not 0 < target_sensitivity <= 1:
        raise MedvlkitError(f"--target-sensitivity {target_sensitivity} must be in (0, 1]")
    if multilabel:
        temps = []
        for c in range(probs.shape[1]):
            known = ~np.isnan(labels[:, c])
            y, p = labels[known, c], probs[known, c]
            temps.append(fit_temperature(lambda t, y=y, p=p: -np.mean(
                y * np.log(scale_binary(p, t) + EPS) + (1 - y) * np.log(1 - scale_binary(p, t) + EPS))))
        scaled = np.stack([scale_binary(probs[:, c], t) for c, t in enumerate(temps)], axis=1)
    else:
        y_idx = np.nanargmax(labels, axis=1)
        temps = [fit_temperature(lambda t: -np.mean(np.log(scale_softmax(probs, t)[np.arange(len(y_idx)), y_idx]
                                                            + EPS)))]
        scaled = scale_softmax(probs, temps[0])
    thresholds = []
    if threshold_method != "none":
        for c in range(probs.shape[1]):
            known = ~np.isnan(labels[:, c])
            y, s = labels[known, c] == 1, scaled[known, c]
            thresholds.append(youden_threshold(y, s) if threshold_method == "youden"
                              else sensitivity_threshold(y, s, target_sensitivity))
    return Calibration(list(classnames), multilabel, temps, thresholds, threshold_method,
                       target_sensitivity if threshold_method == "sensitivity" else None)


def apply_calibration(cal: Calibration, probs: np.ndarray, classnames: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and decisions for new predictions.

    Returns:
        (probs (N, C), decisions): for single-label, decisions (N,) is the class index (argmax of probability
        over threshold when thresholds were fitted); for multi-label, (N, C) booleans.
    """
    if list(classnames) != cal.classnames:
        raise MedvlkitError(f"the calibration was fitted for classes {cal.classnames}, these predictions have "
                            f"{list(classnames)}")
    if cal.multilabel:
        scaled = np.stack([scale_binary(probs[:, c], t) for c, t in enumerate(cal.temperatures)], axis=1)
        thr = np.asarray(cal.thresholds) if cal.thresholds else np.full(len(classnames), 0.5)
        return scaled, scaled >= thr
    scaled = scale_softmax(probs, cal.temperatures[0])
    if cal.thresholds and len(classnames) == 2:  # binary: the positive (second) class's threshold decides
        return scaled, (scaled[:, 1] >= cal.thresholds[1]).astype(int)
    if cal.thresholds:
        # one threshold per class: pick the class whose probability clears its threshold by the widest ratio
        return scaled, (scaled / np.maximum(np.asarray(cal.thresholds), EPS)).argmax(1)
    return scaled, scaled.argmax(1)


def read_labelled_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None, bool]:
    """A medvlkit predictions.csv with its ``true`` column turned back into labels.

    The mode comes from the ``result.json`` beside it (``pos_neg`` means multi-label); for multi-label rows the
    ``true`` column lists the present classes, so unknown (NaN) labels read as absent.

    Returns:
        files, classnames, probs (N, C), labels (N, C) or None when ``true`` is empty, multilabel.
    """
    from medvlkit.data.adapters.csv_labels import read_csv_rows
    from medvlkit.evaluate import read_prediction_csv

    files, classnames, probs = read_prediction_csv(Path(path))
    result = Path(path).parent / "result.json"
    multilabel = result.is_file() and json.loads(result.read_text()).get("mode") == "pos_neg"
    _, rows = read_csv_rows(Path(path))
    truth = [r.get("true", "") for r in rows]
    if not any(truth):
        return files, classnames, probs, None, multilabel
    index = {c: i for i, c in enumerate(classnames)}
    labels = np.zeros(probs.shape, dtype=np.float64)
    for i, t in enumerate(truth):
        for name in filter(None, t.split("|")):
            if name not in index:
                raise MedvlkitError(f"{path}: true label '{name}' is not among the classes {classnames}")
            labels[i, index[name]] = 1.0
    if not multilabel and not np.all(labels.sum(1) == 1):
        raise MedvlkitError(f"{path}: every row needs exactly one true class for single-label calibration")
    return files, classnames, probs, labels, multilabel


def confidence_and_correct(labels: np.ndarray, probs: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) pairs for reliability diagrams: top label, or every known class cell."""
    if not multilabel:
        return probs.max(1), (probs.argmax(1) == np.nanargmax(labels, 1)).astype(float)
    known = ~np.isnan(labels)
    return probs[known], labels[known]


def calibrate_predictions(predictions: Path, out_dir: Path, threshold_method: str = "youden",
                          target_sensitivity: float = 0.9) -> dict:
    """Fit a calibration on validation predictions; write calibration.json, result.json, reliability.png."""
    from medvlkit.plots import reliability_png
    from medvlkit.results import write_result

    files, classnames, probs, labels, multilabel = read_labelled_predictions(predictions)
    if labels is None:
        raise MedvlkitError(f"{predictions} has no true labels: calibration needs labelled validation predictions")
    cal = fit_calibration(labels, probs, classnames, multilabel, threshold_method, target_sensitivity)
    cal.fitted_on = {"predictions": str(predictions), "n": len(files)}
    out_dir.mkdir(parents=True, exist_ok=True)
    cal.save(out_dir / "calibration.json")
    scaled, _ = apply_calibration(cal, probs, classnames)
    metrics = {"ece_before": calibration_error(labels, probs, multilabel),
               "ece_after": calibration_error(labels, scaled, multilabel), "n": len(files)}
    curves = {"before": reliability(*confidence_and_correct(labels, probs, multilabel)),
              "after": reliability(*confidence_and_correct(labels, scaled, multilabel))}
    (out_dir / "reliability.png").write_bytes(reliability_png(curves, "validation reliability"))
    write_result(out_dir, dataset=str(predictions), model="", task="calibrate", metrics=metrics,
                 config={"predictions": str(predictions), "thresholds": threshold_method,
                         "target_sensitivity": target_sensitivity},
                 extra={"calibration": asdict(cal), "reliability": curves})
    return metrics


def apply_to_predictions(predictions: Path, calibration: Path, out_dir: Path, n_bootstrap: int = 1000,
                         seed: int = 0) -> dict:
    """Apply a saved calibration to other predictions; write predictions.csv (+ metrics before/after when the
    predictions carry labels) and result.json."""
    from medvlkit.evaluate import evaluate_probs
    from medvlkit.plots import reliability_png
    from medvlkit.results import write_predictions, write_result

    cal = Calibration.load(calibration)
    files, classnames, probs, labels, multilabel = read_labelled_predictions(predictions)
    scaled, decisions = apply_calibration(cal, probs, classnames)
    out_dir.mkdir(parents=True, exist_ok=True)
    thr = np.asarray(cal.thresholds) if cal.multilabel and cal.thresholds else 0.5
    write_predictions(out_dir, files, classnames, scaled, labels, cal.multilabel, decisions)
    metrics, ci, extra = {}, {}, {"calibration": asdict(cal), "mode": "pos_neg" if cal.multilabel else "softmax",
                                  "classnames": classnames}
    if labels is not None:
        before = evaluate_probs(labels, probs, classnames, cal.multilabel, n_bootstrap, seed)
        after = evaluate_probs(labels, scaled, classnames, cal.multilabel, n_bootstrap, seed,
                               decisions=None if cal.multilabel else decisions, thresholds=thr)
        metrics = after.metrics | {"ece": calibration_error(labels, scaled, cal.multilabel),
                                   "ece_uncalibrated": calibration_error(labels, probs, cal.multilabel)}
        ci = after.ci
        extra |= {"metrics_uncalibrated": before.metrics, "confusion_matrix": after.confusion_matrix,
                  "reliability": {"uncalibrated": reliability(*confidence_and_correct(labels, probs, cal.multilabel)),
                                  "calibrated": reliability(*confidence_and_correct(labels, scaled, cal.multilabel))}}
        (out_dir / "reliability.png").write_bytes(reliability_png(extra["reliability"], "reliability"))
    write_result(out_dir, dataset=str(predictions), model="", task="apply_calibration", metrics=metrics, ci=ci,
                 config={"predictions": str(predictions), "calibration": str(calibration)}, seed=seed, extra=extra)
    return metrics
