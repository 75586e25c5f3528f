"""Scoring predictions against labels: metrics, bootstrap CIs and the confusion matrix in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.data.adapters.csv_labels import read_csv_rows
from medvlkit.engine.bootstrap import bootstrap_classification
from medvlkit.engine.metrics import confusion_matrix, multilabel_metrics, single_label_metrics
from medvlkit.errors import MedvlkitError

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
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate_probs(labels: np.ndarray, probs: np.ndarray | None, classnames: list[str], multilabel: bool,
                   n_bootstrap: int = 1000, seed: int = 0, decisions: np.ndarray | None = None,
                   thresholds: np.ndarray | float = 0.5, log_probs: np.ndarray | None = None) -> Evaluation:
    """Score (N, C) predictions against (N, C) labels (one-hot for single-label; 1/0/NaN multi-label).

    Rankings (AUROC, AP) and decisions use ``log_probs`` (float64 natural-log probabilities) when given, so
    probabilities that round to 1.0 keep their order; else ``probs``.

    Args:
        n_bootstrap: bootstrap resamples for the 95% CIs (0 disables them).
        seed: the bootstrap's seed.
        decisions: single-label predicted class indices (N,) when not the argmax (validation thresholds).
        thresholds: multi-label per-class decision thresholds, on probabilities.
        log_probs: the lossless form of ``probs`` (``probs`` may then be None).
    """
    scores = np.asarray(log_probs if log_probs is not None else probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != scores.shape:
        raise MedvlkitError(f"labels {labels.shape} and predictions {scores.shape} do not align")
    if len(labels) == 0:
        raise MedvlkitError("nothing to evaluate: no labelled predictions")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise MedvlkitError(f"{int(bad.sum())} of {len(scores)} predictions hold NaN or infinite scores (first: row "
                            f"{int(np.flatnonzero(bad)[0])}); metrics of such scores mean nothing: fix the model or "
                            "the predictions file")
    if not multilabel:
        one = np.nan_to_num(labels, nan=0.0)
        bad = ~((one == 1).sum(axis=1) == 1) | ~np.isin(one, (0, 1)).all(axis=1)
        if bad.any():
            raise MedvlkitError(f"{int(bad.sum())} single-label rows do not hold exactly one true class (first: row "
                                f"{int(np.flatnonzero(bad)[0])}); score multi-label data as multi-label")
    if multilabel:
        thr = np.asarray(thresholds, dtype=np.float64)
        if log_probs is not None:
            with np.errstate(divide="ignore"):
                thr = np.log(thr)
        metrics, keys, cm = multilabel_metrics(labels, scores, classnames, thr), CI_KEYS_MULTI, None
        arrays: tuple[np.ndarray, ...] = (labels, scores, np.broadcast_to(thr, (scores.shape[1],)))
    else:
        y = np.nanargmax(labels, axis=1)
        d = scores.argmax(1) if decisions is None else np.asarray(decisions, dtype=int)
        metrics, keys = single_label_metrics(y, scores, classnames, d), CI_KEYS_SINGLE
        arrays = (y, scores, d)
        cm = confusion_matrix(y, d, len(classnames)).tolist()
    ci = {}
    if n_bootstrap > 0:  # vectorised over resamples; equal to bootstrap_ci over the metric function, same seed
        ci = bootstrap_classification("multi" if multilabel else "single", arrays, keys, n_bootstrap, seed)
    extra: dict[str, Any] = {"macro_left_out": [c for c in classnames if np.isnan(metrics.get(f"recall/{c}", 0.0))]}
    if multilabel:
        extra["confusion_matrices"] = multilabel_confusion(labels, scores, classnames, thr)
    return Evaluation(metrics, ci, cm, extra)


def multilabel_confusion(labels: np.ndarray, scores: np.ndarray, classnames: list[str],
                         thresholds: np.ndarray | float) -> dict[str, list[list[int]]]:
    """Per class, the 2x2 confusion matrix [[TN, FP], [FN, TP]] at its threshold (known labels only)."""
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (scores.shape[1],))
    out = {}
    for c, name in enumerate(classnames):
        known = ~np.isnan(labels[:, c])
        y, pred = labels[known, c] == 1, scores[known, c] >= thr[c]
        out[name] = [[int(np.sum(~y & ~pred)), int(np.sum(~y & pred))], [int(np.sum(y & ~pred)), int(np.sum(y & pred))]]
    return out


def read_label_csv(path: Path, classnames: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """A labels CSV: ``file`` plus either a ``label`` column of class names (single-label) or one 0/1/blank
    column per class (multi-label). Returns {file: (C,) label row}, multilabel.

    Raises:
        MedvlkitError: a missing column, a class name not predicted, a value that is not 1, 0 or blank, or one file
            labelled two ways (which would leave one of them to win silently).
    """
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
        table = [(r["file"], np.eye(len(classnames))[index[r["label"]]]) for r in rows]
        return _one_row_per_file(path, table), False
    missing = [c for c in classnames if c not in header]
    if missing:
        raise MedvlkitError(f"--labels {path}: needs a 'label' column or one column per class; missing {missing}")
    values = {"": np.nan, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}
    table = []
    for n, r in enumerate(rows, 1):
        bad = [c for c in classnames if r[c].strip() not in values]
        if bad:
            raise MedvlkitError(f"--labels {path}: row {n} holds '{r[bad[0]].strip()}' for class '{bad[0]}'; labels "
                                "must be 1, 0 or blank (unknown)")
        table.append((r["file"], np.array([values[r[c].strip()] for c in classnames])))
    return _one_row_per_file(path, table), True


def _one_row_per_file(path: Path, table: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for file, row in table:
        if file in out and not np.array_equal(out[file], row, equal_nan=True):
            raise MedvlkitError(f"--labels {path}: '{file}' is labelled two ways; give each file one row")
        out[file] = row
    return out


@dataclass
class Scored:
    """Predictions joined with their truth: what every figure of ``evaluate`` is computed from.

    Attributes:
        files: (N,) item ids; classnames: column order; labels: (N, C) 1/0/NaN; log_probs: (N, C) float64;
        multilabel: the mode; unmatched: predictions without a label, left out.
    """

    files: list[str]
    classnames: list[str]
    labels: np.ndarray
    log_probs: np.ndarray
    multilabel: bool
    unmatched: int = 0


def scored_predictions(predictions: Path, labels: Path | None = None, multilabel: bool | None = None) -> Scored:
    """A predictions CSV joined on ``file`` with a labels CSV, or with its own truth columns.

    Raises:
        MedvlkitError: no truth, no mode, or no file in common.
    """
    from medvlkit.engine.results import read_predictions

    pred = read_predictions(Path(predictions))
    if labels is None:
        if pred.labels is None:
            raise MedvlkitError(f"{predictions} has no true_<class> columns: pass --labels FILE")
        mode = pred.multilabel if multilabel is None else multilabel
        if mode is None:
            raise MedvlkitError(f"{predictions} has no 'mode' column: say whether it is multi-label")
        return Scored(pred.files, pred.classnames, pred.labels, pred.log_probs, mode)
    table, is_multi = read_label_csv(Path(labels), pred.classnames)
    keep = [i for i, f in enumerate(pred.files) if f in table]
    if not keep:
        raise MedvlkitError(f"no file of {predictions} appears in {labels}; both need the same 'file' values")
    y = np.stack([table[pred.files[i]] for i in keep])
    return Scored([pred.files[i] for i in keep], pred.classnames, y, pred.log_probs[keep],
                  is_multi if multilabel is None else multilabel, len(pred.files) - len(keep))


def evaluate_csv(predictions: Path, labels: Path | None = None, n_bootstrap: int = 1000, seed: int = 0,
                 multilabel: bool | None = None) -> tuple[Evaluation, list[str], int]:
    """Score a predictions CSV against a labels CSV joined on ``file``, or against its own truth columns.

    A medvlkit ``predictions.csv`` scored on its own truth reproduces its run's ``result.json`` metrics exactly.

    Returns:
        the evaluation, the class names, and the number of predictions without a label (left out).
    """
    s = scored_predictions(predictions, labels, multilabel)
    ev = evaluate_probs(s.labels, None, s.classnames, s.multilabel, n_bootstrap, seed, log_probs=s.log_probs)
    return ev, s.classnames, s.unmatched


@dataclass
class ClinicalOptions:
    """What ``evaluate`` adds for a clinical reader (all off by default).

    Attributes:
        val_predictions: labelled VALIDATION predictions (same classes) where operating-point thresholds are chosen.
        specificities / sensitivities: targets ("sensitivity at specificity X", "specificity at sensitivity X").
        prevalence: also PPV/NPV at this prevalence.
        positive: the class of a two-class single-label task whose decision curve is drawn (default: the second).
        conformal: also split-conformal prediction sets of this coverage, fitted on the validation predictions
            (single-label); conformal_mode: marginal or class.
    """

    val_predictions: Path | None = None
    specificities: tuple[float, ...] = (0.9, 0.95)
    sensitivities: tuple[float, ...] = (0.9, 0.95)
    prevalence: float | None = None
    positive: str | None = None
    conformal: float | None = None
    conformal_mode: str = "marginal"


def check_val_split(val_split: str | None, split: str | None, conformal: float | None) -> None:
    """``--val-split`` / ``--conformal`` of ``zeroshot`` and ``eval``, checked before any image is read.

    Raises:
        MedvlkitError: prediction sets without a validation split, or the split scored named as its own validation.
    """
    if conformal is not None and not val_split:
        raise MedvlkitError("--conformal needs --val-split: the set rule is fitted on a validation split")
    if val_split and val_split == split:
        raise MedvlkitError(f"--val-split {val_split} is the split scored: thresholds must be chosen on other images")


DECISION_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
"""Threshold probabilities of the decision curves: 0.01 to 0.99."""


def aligned_validation(val: Scored, test: Scored, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The validation labels and log-probabilities with their columns in ``test``'s class order (matched by name).

    Raises:
        MedvlkitError: another mode, a class the validation part lacks, or an image in both parts (a threshold or
            set rule fitted on the test images would be reported as if chosen beforehand).
    """
    from medvlkit.engine.labels import canonical_class

    if val.multilabel != test.multilabel:
        raise MedvlkitError(f"validation {source} is {'multi' if val.multilabel else 'single'}-label, the "
                            f"predictions scored are {'multi' if test.multilabel else 'single'}-label")
    keys = [canonical_class(c) for c in val.classnames]
    missing = [c for c in test.classnames if canonical_class(c) not in keys]
    if missing:
        raise MedvlkitError(f"validation {source} has no class {missing[0]!r} (it has {val.classnames})")
    if not test.multilabel and len(keys) != len(test.classnames):
        # one softmax over other classes gives other probabilities: a threshold or set rule would not carry over
        raise MedvlkitError(f"validation {source} is a softmax over {val.classnames}, the predictions scored over "
                            f"{test.classnames}: score both over the same classes")
    order = [keys.index(canonical_class(c)) for c in test.classnames]
    shared = set(val.files) & set(test.files)
    if shared:
        raise MedvlkitError(f"validation {source} shares {len(shared)} file(s) with the predictions scored (e.g. "
                            f"{sorted(shared)[0]}): thresholds must come from other images than those they are "
                            "reported on")
    return val.labels[:, order], val.log_probs[:, order]


def operating_points_between(val: Scored, test: Scored, opts: ClinicalOptions, n_bootstrap: int, seed: int,
                             source: str) -> dict[str, Any]:
    """Per class, thresholds chosen on ``val`` and the rates they give on ``test`` (with CIs). The one place
    operating points are made: ``evaluate --val-predictions``, ``zeroshot --val-split`` and the ``eval`` sweep all
    come here (checks: :func:`aligned_validation`)."""
    from medvlkit.engine.operating_points import per_class_operating_points

    val_labels, val_scores = aligned_validation(val, test, source)
    out = per_class_operating_points(val_labels, val_scores, test.labels, test.log_probs, test.classnames,
                                     test.multilabel, opts.specificities, opts.sensitivities, opts.prevalence,
                                     n_bootstrap, seed)
    for rows in out["classes"].values():
        for row in rows:  # chosen on log-probabilities (lossless order); reported as a probability too
            row["threshold_log_prob"], row["threshold"] = row["threshold"], float(np.exp(row["threshold"]))
    return {"validation": source, "n_validation": len(val.files)} | out


def conformal_between(val: Scored, test: Scored, level: float, mode: str, n_bootstrap: int, seed: int,
                      source: str) -> dict[str, Any]:
    """Split-conformal prediction sets fitted on ``val`` and applied to ``test``: the coverage report (with CIs,
    per true class). ``evaluate --val-predictions --conformal``, ``zeroshot --val-split --conformal`` and the sweep
    come here; ``calibrate --conformal`` stores the same rule (:func:`medvlkit.engine.conformal.fit_conformal`) for
    later."""
    from medvlkit.engine.conformal import coverage_report, fit_conformal, prediction_sets

    if test.multilabel:
        raise MedvlkitError("--conformal: prediction sets are for single-label predictions; these are multi-label")
    val_labels, val_scores = aligned_validation(val, test, source)
    q = fit_conformal(val_labels, np.exp(val_scores), level, mode)
    sets = prediction_sets(np.exp(test.log_probs), q)
    report = coverage_report(test.labels, sets, test.classnames, n_bootstrap, seed)
    return {"validation": source, "n_validation": len(val.files), "level": level, "mode": mode, "q": q,
            "same_images_as_fit": False} | report


def read_validation(val_path: Path) -> Scored:
    """Labelled validation predictions from a file.

    Raises:
        MedvlkitError: the file lacks truth or a mode.
    """
    from medvlkit.engine.results import read_labelled_predictions

    val = read_labelled_predictions(val_path)
    if val.labels is None:
        raise MedvlkitError(f"--val-predictions {val_path} has no true labels: thresholds need labelled validation "
                            "predictions")
    return Scored(val.files, val.classnames, val.labels, val.log_probs, bool(val.multilabel))


def decision_curves(test: Scored, positive: str | None = None) -> dict[str, Any]:
    """Net benefit over :data:`DECISION_THRESHOLDS` for each binary question the data asks: every class of
    multi-label data, the ``positive`` class (default: the second) of two-class single-label data; none for more
    classes. Returns {class: {threshold, model, treat_all, treat_none}}."""
    from medvlkit.engine.operating_points import class_columns, net_benefit, usable_class

    if test.multilabel:
        chosen = list(range(len(test.classnames)))
    elif len(test.classnames) == 2:
        if positive is not None and positive not in test.classnames:
            raise MedvlkitError(f"--positive {positive}: not one of the classes {test.classnames}")
        chosen = [test.classnames.index(positive) if positive else 1]
    else:
        return {}
    out = {}
    for c in chosen:
        y, log_p = class_columns(test.labels, test.log_probs, test.multilabel, c)
        if usable_class(y) is None:
            out[test.classnames[c]] = net_benefit(y, np.exp(log_p), DECISION_THRESHOLDS)
    return out


def operating_point_metrics(points: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The operating points as flat per-class metrics (``sensitivity@specificity0.95/<class>`` ...) and their CIs,
    for tables that list scalars (report.csv)."""
    metrics, ci = {}, {}
    for name, rows in points.get("classes", {}).items():
        for row in rows:
            other = "sensitivity" if row["target"] == "specificity" else "specificity"
            key = f"{other}@{row['target']}{row['level']:g}/{name}"
            metrics[key], ci[key] = row[other], row["ci"].get(other)
    return metrics, ci


def evaluate_task(predictions: Path, labels: Path | None, out_dir: Path, n_bootstrap: int = 1000,
                  seed: int = 0, clinical: ClinicalOptions | None = None,
                  subgroups: SubgroupOptions | None = None) -> tuple[dict[str, Any], int]:
    """The ``evaluate`` task: score ``predictions`` (see :func:`evaluate_csv`), with operating points chosen on
    validation predictions and decision curves when ``clinical`` asks, and write ``out_dir/result.json``.
    Returns (the result, the number of predictions without a label)."""
    import json

    from medvlkit.engine.results import write_result

    clinical = clinical or ClinicalOptions()
    s = scored_predictions(predictions, labels)
    ev = evaluate_probs(s.labels, None, s.classnames, s.multilabel, n_bootstrap, seed, log_probs=s.log_probs)
    metrics, ci, extra = dict(ev.metrics), dict(ev.ci), dict(ev.extra)
    if clinical.conformal is not None and clinical.val_predictions is None:
        raise MedvlkitError("--conformal needs --val-predictions: the set rule is fitted on validation predictions")
    if clinical.val_predictions is not None:
        val, source = read_validation(clinical.val_predictions), str(clinical.val_predictions)
        extra["operating_points"] = operating_points_between(val, s, clinical, n_bootstrap, seed, source)
        if clinical.conformal is not None:
            extra["conformal"] = conformal_between(val, s, clinical.conformal, clinical.conformal_mode, n_bootstrap,
                                                   seed, source)
        more, more_ci = operating_point_metrics(extra["operating_points"])
        metrics |= more
        ci |= {k: v for k, v in more_ci.items() if v}
    curves = decision_curves(s, clinical.positive)
    if curves:
        extra["decision_curve"] = curves
    if subgroups is not None and subgroups.columns:
        extra["subgroups"] = subgroup_report(s, attributes_for(s.files, subgroups), subgroups, n_bootstrap, seed)
    path = write_result(out_dir, dataset=str(labels or predictions), model=str(predictions), task="evaluate",
                        metrics=metrics, ci=ci, seed=seed,
                        config={"predictions": str(predictions), "labels": str(labels) if labels else None,
                                "bootstrap": n_bootstrap,
                                "val_predictions": str(clinical.val_predictions) if clinical.val_predictions else None,
                                "specificities": list(clinical.specificities),
                                "sensitivities": list(clinical.sensitivities), "prevalence": clinical.prevalence,
                                "conformal": clinical.conformal,
                                "conformal_mode": clinical.conformal_mode if clinical.conformal else None,
                                "subgroups": subgroups.columns if subgroups else [],
                                "metadata": str(subgroups.metadata) if subgroups and subgroups.metadata else None},
                        extra={"classnames": s.classnames, "confusion_matrix": ev.confusion_matrix,
                               "n_unlabelled_predictions": s.unmatched} | extra)
    return json.loads(path.read_text()), s.unmatched


@dataclass
class SubgroupOptions:
    """Subgroup analysis (off when ``columns`` is empty).

    Attributes:
        columns: metadata columns to split by (sex, age, view...), each analysed on its own.
        age_bands: edges that turn a numeric column into bands (``18,40,65`` -> <18, 18-39, 40-64, >=65).
        min_size: subgroups with fewer labelled images are listed, not scored.
        metric: the metric whose largest between-subgroup gap is reported (auroc by default).
        metadata: a CSV/JSONL file with a ``file`` column and the columns (beside what the dataset itself knows).
    """

    columns: list[str] = field(default_factory=list)
    age_bands: list[float] = field(default_factory=list)
    min_size: int = 30
    metric: str = "auroc"
    metadata: Path | None = None


def subgroup_values(column: str, values: list[str | None], opts: SubgroupOptions
                    ) -> tuple[list[str | None], list[str] | None]:
    """A column's values as subgroups, and their order where it means something: banded (youngest first) when it
    holds numbers and ``--age-bands`` are given.

    Raises:
        MedvlkitError: a numeric column without bands (every age would be its own subgroup).
    """
    from medvlkit.engine.subgroups import age_bands, band_names, numeric_share

    if numeric_share(values) >= 0.9:
        if not opts.age_bands:
            raise MedvlkitError(f"--subgroups {column}: the column holds numbers; give --age-bands (e.g. 18,40,65) to "
                                "group them")
        return age_bands(values, opts.age_bands), band_names(opts.age_bands)
    return values, None


def subgroup_report(scored: Scored, attributes: dict[str, list[str | None]], opts: SubgroupOptions,
                    n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per requested column: metrics per subgroup with CIs and the largest gap with a paired bootstrap CI
    (:func:`medvlkit.engine.subgroups.subgroup_metrics`), on the rows of ``scored``; ``attributes`` hold each
    column's value per row. Returns {column: analysis}."""
    from medvlkit.engine.subgroups import subgroup_metrics

    if opts.min_size < 1:
        raise MedvlkitError(f"--min-subgroup {opts.min_size}: must be at least 1")
    if scored.multilabel:
        arrays: tuple[np.ndarray, ...] = (scored.labels, scored.log_probs,
                                          np.full(len(scored.classnames), np.log(0.5)))
        kind = "multi"
    else:
        kind = "single"
        arrays = (np.nanargmax(scored.labels, axis=1), scored.log_probs, scored.log_probs.argmax(1))
    out = {}
    for column in opts.columns:
        if column not in attributes:
            raise MedvlkitError(f"--subgroups {column}: no such metadata column; known: "
                                f"{', '.join(sorted(attributes)) or 'none (pass --metadata FILE)'}")
        groups, order = subgroup_values(column, attributes[column], opts)
        out[column] = subgroup_metrics(kind, arrays, scored.classnames, groups, opts.min_size, opts.metric,
                                       n_bootstrap, seed, order=order)
        if order:
            out[column]["age_bands"] = list(opts.age_bands)
    return out


def attributes_for(items: list[str], opts: SubgroupOptions,
                   known: dict[str, list[str | None]] | None = None) -> dict[str, list[str | None]]:
    """The subgroup columns for ``items``: the dataset's own attributes (``known``, aligned with ``items``), then
    those of ``opts.metadata`` (which win for a column both have)."""
    from medvlkit.data.metadata import metadata_columns, read_metadata

    out = dict(known or {})
    if opts.metadata is not None:
        table = read_metadata(opts.metadata)
        in_file = {k for v in table.values() for k in v}
        out |= metadata_columns(items, table, [c for c in opts.columns if c in in_file], opts.metadata)
    return out
