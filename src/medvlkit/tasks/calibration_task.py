"""The ``calibrate`` and ``apply-calibration`` tasks: prediction files in, calibration.json / predictions.csv /
result.json / reliability.png out, around the fitting in ``calibrate.py``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

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


def calibrate_predictions(predictions: Path, out_dir: Path, threshold_method: str = "youden",
                          target_sensitivity: float = 0.9) -> dict:
    """Fit a calibration on validation predictions; write calibration.json, result.json, reliability.png."""
    from medvlkit.engine.plots import reliability_png
    from medvlkit.engine.results import write_result

    pred = read_labelled_predictions(predictions)
    if pred.labels is None:
        raise MedvlkitError(f"{predictions} has no true labels: calibration needs labelled validation predictions")
    labels, multilabel = pred.labels, bool(pred.multilabel)  # read_labelled_predictions refuses a file without
    cal = fit_calibration(labels, pred.log_probs, pred.classnames, multilabel, threshold_method, target_sensitivity)
    cal.fitted_on = {"predictions": str(predictions), "n": len(pred.files)}
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
                         "target_sensitivity": target_sensitivity},
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
    write_predictions(out_dir, pred.files, classnames, scaled, labels, cal.multilabel, decisions)
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
    write_result(out_dir, dataset=str(predictions), model="", task="apply_calibration", metrics=metrics, ci=ci,
                 config={"predictions": str(predictions), "calibration": str(calibration)}, seed=seed, extra=extra)
    return metrics
