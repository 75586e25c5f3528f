"""The ``calibrate`` and ``apply-calibration`` tasks: prediction files in, calibration.json / predictions.csv /
result.json / reliability.png out, around the fitting in ``calibrate.py``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.engine.conformal import coverage_report, fit_conformal, prediction_sets
from medvlkit.engine.results import read_labelled_predictions
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.calibrate import (
    Calibration,
    apply_calibration,
    calibration_error,
    confidence_and_correct,
    fit_calibration,
    reliability,
)

logger = logging.getLogger(__name__)


def files_digest(files: list[str]) -> str:
    """sha256 of the sorted item ids: tells whether predictions are of the images a rule was fitted on."""
    return hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()


def calibrate_predictions(predictions: Path, out_dir: Path, threshold_method: str = "youden",
                          target_sensitivity: float = 0.9, conformal: float | None = None,
                          conformal_mode: str = "marginal") -> dict:
    """Fit a calibration on validation predictions; write calibration.json, result.json, reliability.png.

    ``conformal``: also fit a split-conformal prediction-set rule of this coverage (single-label only; ``mode``
    marginal or class-conditional) on the predictions' own probabilities."""
    from medvlkit.engine.plots import reliability_png
    from medvlkit.engine.results import write_result

    pred = read_labelled_predictions(predictions)
    if pred.labels is None:
        raise MedvlkitError(f"{predictions} has no true labels: calibration needs labelled validation predictions")
    labels, multilabel = pred.labels, bool(pred.multilabel)  # read_labelled_predictions refuses a file without
    cal = fit_calibration(labels, pred.log_probs, pred.classnames, multilabel, threshold_method, target_sensitivity)
    if conformal is not None:
        if multilabel:
            raise MedvlkitError("--conformal: prediction sets are for single-label predictions; these are multi-label "
                                "(use per-class --thresholds)")
        cal.conformal_q = fit_conformal(labels, pred.probs, conformal, conformal_mode)
        cal.conformal_level, cal.conformal_mode = conformal, conformal_mode
    cal.fitted_on = {"predictions": str(predictions), "n": len(pred.files), "files_sha256": files_digest(pred.files)}
    out_dir.mkdir(parents=True, exist_ok=True)
    cal.save(out_dir / "calibration.json")
    scaled = np.exp(apply_calibration(cal, pred.log_probs, pred.classnames)[0])
    metrics = {"ece_uncalibrated": calibration_error(labels, pred.probs, multilabel),
               "ece": calibration_error(labels, scaled, multilabel), "n": len(pred.files)}
    curves = {"before": reliability(*confidence_and_correct(labels, pred.probs, multilabel)),
              "after": reliability(*confidence_and_correct(labels, scaled, multilabel))}
    (out_dir / "reliability.png").write_bytes(reliability_png(curves, "validation reliability"))
    write_result(out_dir, dataset=str(predictions), model="", task="calibrate", metrics=metrics,
                 config={"predictions": str(predictions), "thresholds": threshold_method,
                         "target_sensitivity": target_sensitivity, "conformal": conformal,
                         "conformal_mode": conformal_mode if conformal is not None else None},
                 extra={"calibration": asdict(cal), "reliability": curves,
                        "mode": "pos_neg" if multilabel else "softmax", "data_split": "validation"})
    return metrics


def apply_to_predictions(predictions: Path, calibration: Path, out_dir: Path, n_bootstrap: int = 1000,
                         seed: int = 0) -> dict:
    """Apply a saved calibration to other predictions; write predictions.csv (+ metrics before/after when the
    predictions carry labels) and result.json."""
    from medvlkit.engine.plots import reliability_png
    from medvlkit.engine.results import write_predictions, write_result
    from medvlkit.tasks.evaluate import evaluate_probs

    cal = Calibration.load(calibration)
    pred = read_labelled_predictions(predictions, cal.classnames)
    if pred.multilabel != cal.multilabel:
        raise MedvlkitError(f"{predictions} is {'multi' if pred.multilabel else 'single'}-label; the calibration "
                            f"was fitted on {'multi' if cal.multilabel else 'single'}-label predictions")
    classnames, labels = cal.classnames, pred.labels
    scaled, decisions = apply_calibration(cal, pred.log_probs, classnames)
    out_dir.mkdir(parents=True, exist_ok=True)
    thr = np.asarray(cal.thresholds) if cal.multilabel and cal.thresholds else 0.5
    sets = prediction_sets(pred.probs, cal.conformal_q) if cal.conformal_level is not None else None
    write_predictions(out_dir, pred.files, classnames, scaled, labels, cal.multilabel, decisions,
                      extra=None if sets is None else {f"set_{c}": sets[:, i].astype(int)
                                                       for i, c in enumerate(classnames)})
    metrics: dict[str, Any]
    ci: dict[str, Any]
    extra: dict[str, Any]
    metrics, ci, extra = {}, {}, {"calibration": asdict(cal), "mode": "pos_neg" if cal.multilabel else "softmax",
                                  "classnames": classnames,
                                  "threshold_source": f"validation ({cal.threshold_method}), {calibration}"
                                  if cal.thresholds else "none (argmax / 0.5)"}
    if labels is not None:
        known = ~np.all(np.isnan(labels), axis=1)
        before = evaluate_probs(labels[known], None, classnames, cal.multilabel, n_bootstrap, seed,
                                log_probs=pred.log_probs[known])
        after = evaluate_probs(labels[known], None, classnames, cal.multilabel, n_bootstrap, seed,
                               decisions=None if cal.multilabel else decisions[known], thresholds=thr,
                               log_probs=scaled[known])
        probs, scaled_p = pred.probs, np.exp(scaled)
        metrics = after.metrics | {"ece": calibration_error(labels, scaled_p, cal.multilabel),
                                   "ece_uncalibrated": calibration_error(labels, probs, cal.multilabel)}
        ci = after.ci
        extra |= {"metrics_uncalibrated": before.metrics, "confusion_matrix": after.confusion_matrix, **after.extra,
                  "reliability": {"uncalibrated": reliability(*confidence_and_correct(labels, probs, cal.multilabel)),
                                  "calibrated": reliability(*confidence_and_correct(labels, scaled_p,
                                                                                    cal.multilabel))}}
        (out_dir / "reliability.png").write_bytes(reliability_png(extra["reliability"], "reliability"))
        if sets is not None:
            report = coverage_report(labels[known], sets[known], classnames, n_bootstrap, seed)
            same = cal.fitted_on.get("files_sha256") == files_digest(pred.files)
            extra["conformal"] = {"level": cal.conformal_level, "mode": cal.conformal_mode, "q": cal.conformal_q,
                                  "same_images_as_fit": same} | report
            metrics |= {"conformal_coverage": report["coverage"], "mean_set_size": report["mean_set_size"]}
            ci |= {"conformal_coverage": report["ci"].get("coverage"),
                   "mean_set_size": report["ci"].get("mean_set_size")}
            ci = {k: v for k, v in ci.items() if v}
            if same:
                logger.warning("%s holds the very images the prediction-set rule was fitted on: its coverage there "
                               "is no guarantee for new images", predictions)
    write_result(out_dir, dataset=str(predictions), model="", task="apply_calibration", metrics=metrics, ci=ci,
                 config={"predictions": str(predictions), "calibration": str(calibration)}, seed=seed, extra=extra)
    return metrics
