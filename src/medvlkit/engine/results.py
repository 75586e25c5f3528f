"""The files every run writes: ``result.json`` (CLIP_benchmark's schema plus medvlkit's fields) and
``predictions.csv``."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
DEFAULT_THRESHOLD_SOURCE = "none: argmax (single-label) / probability 0.5 (multi-label); no calibration applied"
PREDICTIONS_FILE = "predictions.csv"


def default_out_dir(verb: str) -> Path:
    """``runs/<UTC timestamp>-<verb>``."""
    return Path("runs") / f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{verb}"


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("medvlkit", "torch", "transformers", "numpy", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars and arrays -> Python."""
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def provenance(model=None, dataset=None, embeddings=None, threshold_source: str | None = None) -> dict:
    """The fields every run records about what it ran on: ``pretrained`` (weight files' names and sha256 prefixes),
    ``pretrained_source`` (for weights fetched from a hub: repository, revision, the commit it resolved to and each
    weight file's full sha256), ``data_split``, ``audit`` (whether an audit's exclusion list was applied to the data,
    which, and how many images it left out), ``seen_by_model`` (how many of the images the model trained on and whether
    they were set aside: :mod:`medvlkit.engine.seen`), ``n_cached`` (vectors reused from the embedding cache) and
    ``threshold_source``."""
    out: dict = {}
    if model is not None:
        out["pretrained"] = model.weights_identity()
        if getattr(model, "hub_source", None):  # fetched from a hub: repository, revision, commit, files' sha256
            out["pretrained_source"] = model.hub_source
    if dataset is not None:
        out["data_split"] = dataset.split or "all (no split)"
        out["audit"] = dataset.meta.get("audit", {"applied": False})
        if "seen_by_model" in dataset.meta:
            out["seen_by_model"] = dataset.meta["seen_by_model"]
    if embeddings is not None:
        out["n_cached"] = int(embeddings.n_cached)
    if threshold_source is not None:
        out["threshold_source"] = threshold_source
    return out


SINGLE_LABEL = ["accuracy", "balanced_accuracy", "macro_f1", "auroc"]
MULTI_LABEL = ["auroc", "average_precision", "macro_f1", "macro_accuracy"]
CLASSIFICATION_TASKS = {"zeroshot_classification", "linear_probe", "finetune_classification", "evaluate",
                        "apply_calibration"}
HEADLINE = {
    "apply_calibration": ["ece", "ece_uncalibrated"],
    "zeroshot_retrieval": ["image_to_text_recall@1", "image_to_text_recall@5", "image_to_text_recall@10",
                           "text_to_image_recall@1", "text_to_image_recall@5", "text_to_image_recall@10"],
    "calibrate": ["ece_uncalibrated", "ece"],
    "gate": ["n_medical", "n_non_medical"],
    "demo": ["gate_accuracy", "modality_accuracy"],
    "embed": ["n_images", "images_per_second"],
}


def headline_keys(result: dict) -> list[str]:
    """The metrics a table shows first for one result: AUROC is among them for every classification task."""
    task, metrics = result.get("task"), result.get("metrics", {})
    if task in CLASSIFICATION_TASKS:
        multi = result.get("mode") == "pos_neg" or ("macro_accuracy" in metrics and "accuracy" not in metrics)
        return (MULTI_LABEL if multi else SINGLE_LABEL) + HEADLINE.get(task, [])
    return HEADLINE.get(str(task), [k for k in metrics if "/" not in k][:4])


def write_result(out_dir: Path, *, dataset: str, model: str, task: str, metrics: dict, ci: dict | None = None,
                 config: dict | None = None, seed: int = 0, n_skipped: int = 0, pretrained: str = "",
                 extra: dict | None = None, headline: list[str] | None = None,
                 file_name: str = RESULT_FILE) -> Path:
    """Write ``out_dir/result.json`` (or ``file_name``, for tasks whose output is a single file).

    Fields: ``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``, ``language`` (CLIP_benchmark) plus
    ``ci`` (95% bootstrap intervals per metric), ``config`` (the call's options), ``seed``, ``versions``,
    ``created_at`` (UTC ISO 8601), ``n_skipped`` (unreadable images left out), ``headline`` (the metrics a table
    shows first: given, or :func:`headline_keys` of the task), and any ``extra`` fields.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": "en", "ci": ci or {}, "config": config or {}, "seed": seed, "versions": versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_skipped": n_skipped}
    data.update(extra or {})
    data["headline"] = list(headline or headline_keys(data))
    path = out_dir / file_name
    write_json_atomic(path, data)
    return path


def read_result(path: Path) -> dict:
    """A ``result.json`` read back (by ``report``, ``eval``...), checked: an object whose ``task``, ``dataset`` and
    ``model`` are text, ``metrics`` and ``ci`` objects, ``headline`` and ``classnames`` lists of text, and list fields
    lists.

    Raises:
        MedvlkitError: damaged or edited, in one line naming the file and the field.
    """
    from medvlkit.artifacts import json_field, read_json_object, string_list

    kind = "medvlkit result.json"
    result = read_json_object(path, kind)
    for name in ("task", "dataset", "model"):
        json_field(result, name, str, path, kind, required=name == "task")
    for name in ("metrics", "ci"):
        json_field(result, name, dict, path, kind, required=False)
    for name in ("headline", "classnames"):
        json_field(result, name, list, path, kind, required=False, check=string_list, expected="a list of text")
    for name in ("images", "examples", "skipped", "confusion_matrix"):
        json_field(result, name, list, path, kind, required=False)
    bad = [k for k, v in (result.get("metrics") or {}).items()
           if v is not None and not isinstance(v, (int, float, str, list, dict))]
    if bad:
        from medvlkit.errors import MedvlkitError

        raise MedvlkitError(f"{path}: not a valid {kind} (metric '{bad[0]}' is not a number)")
    return result


MODE_COLUMN = {False: "single_label", True: "multilabel"}


PER_CLASS = "each class on its own"
"""``softmax_over`` of multi-label scores: no softmax across classes."""


def write_predictions(out_dir: Path, items: list[str], classnames: list[str], log_probs: np.ndarray,
                      labels: np.ndarray | None, multilabel: bool, decisions: np.ndarray | None = None,
                      softmax_over: list[str] | str | None = None, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``out_dir/predictions.csv``, losslessly: reading it back gives the run's own metrics exactly.

    Columns: ``file``; ``mode`` (``single_label`` or ``multilabel``); ``softmax_over`` (the classes the scores'
    softmax ran over, ``|``-joined, or how multi-label scores were made); ``true`` and ``predicted`` (class names,
    ``|``-joined for multi-label: for people); ``true_<class>`` (1, 0, or empty for unknown); ``prob_<class>`` and
    ``logp_<class>`` (natural-log probability, float64, all digits: the ranking scores use it).
    ``predicted`` follows ``decisions`` when given (class indices (N,) or booleans (N, C), e.g. from
    validation-chosen thresholds), else the argmax / probability >= 0.5. ``extra``: more columns (name -> (N,)
    numbers, written last), e.g. the domain check's ``p_domain`` and ``in_domain``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS_FILE
    tmp = path.with_suffix(".csv.tmp")
    log_probs = np.asarray(log_probs, dtype=np.float64)
    mode = MODE_COLUMN[bool(multilabel)]
    if softmax_over is None:
        softmax_over = PER_CLASS if multilabel else list(classnames)
    over = _csv_field(softmax_over if isinstance(softmax_over, str) else "|".join(softmax_over))
    with open(tmp, "w", newline="") as f:
        extra = extra or {}
        csv.writer(f).writerow(["file", "mode", "softmax_over", "true", "predicted"] + [f"true_{c}" for c in classnames]
                               + [f"prob_{c}" for c in classnames] + [f"logp_{c}" for c in classnames] + list(extra))
        for start in range(0, len(items), _ROWS_PER_BLOCK):  # memory stays flat in N: one block of strings
            stop = min(start + _ROWS_PER_BLOCK, len(items))
            lp = log_probs[start:stop]
            probs = np.exp(lp)
            true = _name_column(labels[start:stop], classnames, multilabel) if labels is not None else [""] * len(lp)
            pred = _decision_column(probs, None if decisions is None else decisions[start:stop], classnames,
                                    multilabel)
            if labels is not None:
                lab = labels[start:stop]
                cells = [",".join(r) for r in np.where(np.isnan(lab), "", np.nan_to_num(lab).astype(int).astype(str))
                         .tolist()]
            else:
                cells = ["," * (len(classnames) - 1)] * len(lp)
            # numbers never need quoting: repr of a list is each float's shortest exact form, joined by ", "
            nums = [repr(p)[1:-1].replace(", ", ",") + "," + repr(q)[1:-1].replace(", ", ",")
                    for p, q in zip(probs.tolist(), lp.tolist())]
            if extra:
                cols = [np.asarray(v)[start:stop].tolist() for v in extra.values()]
                nums = [n + "," + ",".join(repr(c[i] if not isinstance(c[i], bool) else int(c[i])) for c in cols)
                        for i, n in enumerate(nums)]
            f.write("".join(f"{_csv_field(item)},{mode},{over},{_csv_field(t)},{_csv_field(d)},{c},{n}\r\n"
                            for item, t, d, c, n in zip(items[start:stop], true, pred, cells, nums)))
    os.replace(tmp, path)
    return path


@dataclass
class Predictions:
    """A predictions CSV read back: the scores, and the truth when it carries one.

    Attributes:
        files: (N,) item ids.
        classnames: class order of the columns.
        log_probs: (N, C) float64 natural-log probabilities (from ``logp_*``, else the log of ``prob_*``).
        labels: (N, C) 1 / 0 / NaN, or None when the file has no truth.
        multilabel: from the ``mode`` column; None when the file has none (another tool's file).
    """

    files: list[str]
    classnames: list[str]
    log_probs: np.ndarray
    labels: np.ndarray | None
    multilabel: bool | None

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs)


def read_predictions(path: Path) -> Predictions:
    """Read a predictions CSV: medvlkit's own (lossless) or any file with ``file`` and ``prob_<class>`` columns.

    Raises:
        MedvlkitError: missing file or columns, non-numeric scores, an unknown mode, or truth that cannot be read
            without guessing (a multi-label ``true`` column without ``true_<class>`` columns).
    """
    from medvlkit.data.adapters.csv_labels import iter_csv_rows
    from medvlkit.engine.scores import log_probs_from_probs
    from medvlkit.errors import MedvlkitError

    path = Path(path)
    if not path.is_file():
        raise MedvlkitError(f"--predictions {path}: no such file")
    header, rows = iter_csv_rows(path)
    classnames = [c[5:] for c in header if c.startswith("prob_")]
    if "file" not in header or not classnames:
        raise MedvlkitError(f"--predictions {path}: needs a 'file' column and 'prob_<class>' columns "
                            f"(as medvlkit's predictions.csv has); its columns: {', '.join(header)}")
    use_log = all(f"logp_{c}" in header for c in classnames)
    col = {h: i for i, h in enumerate(header)}
    score_at = [col[f"logp_{c}" if use_log else f"prob_{c}"] for c in classnames]
    true_at = [col[f"true_{c}"] for c in classnames] if all(f"true_{c}" in col for c in classnames) else None
    files, modes, names, score_blocks, truth_cells = [], set(), [], [], []
    block: list[list[str]] = []
    for fields in rows:  # streamed: numbers go into numpy blocks, never a dict per row
        files.append(fields[col["file"]])
        modes.add(fields[col["mode"]] if "mode" in col else "")
        if true_at is not None:
            truth_cells.append(tuple(fields[i].strip() for i in true_at))
        elif "true" in col:
            names.append(fields[col["true"]])
        block.append([fields[i] for i in score_at])
        if len(block) == _ROWS_PER_BLOCK:
            score_blocks.append(_floats(block, path))
            block = []
    if block:
        score_blocks.append(_floats(block, path))
    if not files:
        raise MedvlkitError(f"--predictions {path}: no rows")
    values = np.concatenate(score_blocks)
    _check_scores(path, values, use_log, files)
    log_probs = values if use_log else log_probs_from_probs(values)
    if modes - set(MODE_COLUMN.values()) - {""} or len(modes) > 1:
        raise MedvlkitError(f"--predictions {path}: column 'mode' holds {sorted(modes)}; valid: "
                            f"{', '.join(MODE_COLUMN.values())} (one value for the whole file)")
    mode = modes.pop() if modes else ""
    multilabel = None if not mode else mode == "multilabel"
    labels = _read_truth(path, true_at is not None, truth_cells, names, classnames, multilabel)
    return Predictions(files, classnames, log_probs, labels, multilabel)


def read_labelled_predictions(path: Path, classnames: list[str] | None = None) -> Predictions:
    """A predictions CSV with its mode, optionally with columns aligned to ``classnames`` (by name, any case).

    Raises:
        MedvlkitError: the file carries no mode, or its classes do not match ``classnames`` (a single-label file
            must hold exactly those classes: its probabilities are a softmax over its own).
    """
    from medvlkit.engine.labels import canonical_class
    from medvlkit.errors import MedvlkitError

    pred = read_predictions(Path(path))
    if pred.multilabel is None:
        raise MedvlkitError(f"{path} has no 'mode' column (single_label or multilabel); calibration and thresholds "
                            "need it. Rerun the task with this medvlkit, or add the column")
    if classnames is None:
        return pred
    keys = [canonical_class(c) for c in pred.classnames]
    missing = [c for c in classnames if canonical_class(c) not in keys]
    if missing:
        raise MedvlkitError(f"{path} has no scores for class(es) {missing} (it has {pred.classnames})")
    if not pred.multilabel and len(keys) != len(classnames):
        # a softmax over other classes gives other probabilities: picking columns out of it would be wrong silently
        raise MedvlkitError(f"{path} is a softmax over {pred.classnames}, not over {list(classnames)}: score it over "
                            "the same classes")
    order = [keys.index(canonical_class(c)) for c in classnames]
    if order != list(range(len(pred.classnames))):
        logger.warning("%s: columns %s used as %s", path, [pred.classnames[i] for i in order], list(classnames))
    labels = None if pred.labels is None else pred.labels[:, order]
    return Predictions(pred.files, list(classnames), pred.log_probs[:, order], labels, pred.multilabel)


def _check_scores(path: Path, values: np.ndarray, use_log: bool, files: list[str]) -> None:
    """Probabilities within [0, 1] (log-probabilities <= 0), finite, and one row per file.

    Raises:
        MedvlkitError: naming the first offending row (a probability of 9 would rank as the most certain of all, a
            file scored twice would be counted twice).
    """
    from medvlkit.errors import MedvlkitError

    lo, hi = (-np.inf, 1e-12) if use_log else (0.0, 1.0)
    bad = ~np.isfinite(values) & ~(use_log & (values == -np.inf)) | (values < lo) | (values > hi)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        what = "log-probabilities must be <= 0" if use_log else "probabilities must lie in [0, 1]"
        raise MedvlkitError(f"--predictions {path}: row {row + 1} ({files[row]}) holds {values[row, col]}; {what}")
    seen: set[str] = set()
    for f in files:
        if f in seen:
            raise MedvlkitError(f"--predictions {path}: '{f}' appears in more than one row; each file is scored once")
        seen.add(f)


def _floats(block: list[list[str]], path: Path) -> np.ndarray:
    from medvlkit.errors import MedvlkitError

    try:
        return np.array(block, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise MedvlkitError(f"--predictions {path}: non-numeric score ({err})") from None


def _read_truth(path: Path, has_columns: bool, cells: list[tuple[str, ...]], names: list[str], classnames: list[str],
                multilabel: bool | None) -> np.ndarray | None:
    """The truth of a predictions file: ``true_<class>`` cells (one tuple per row) or a ``true`` column of class
    names (single-label only); None when the file carries none."""
    from medvlkit.errors import MedvlkitError

    if has_columns:
        distinct = set().union(*cells) if cells else {""}
        if distinct == {""}:
            return None
        bad = sorted(distinct - {"", "0", "1", "0.0", "1.0"})
        if bad:
            raise MedvlkitError(f"{path}: true_<class> columns must hold 1, 0 or nothing; found {bad}")
        lookup = {"": np.nan, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}
        return np.array([[lookup[v] for v in row] for row in cells], dtype=np.float64).reshape(-1, len(classnames))
    if not any(names):
        return None
    if multilabel is not False:
        raise MedvlkitError(f"{path}: a 'true' column of class names cannot tell unknown from absent labels for "
                            "multi-label data; write true_<class> columns (1, 0 or empty), as medvlkit does")
    index = {c: i for i, c in enumerate(classnames)}
    labels = np.zeros((len(names), len(classnames)), dtype=np.float64)
    for i, name in enumerate(names):
        if name not in index:
            raise MedvlkitError(f"{path}: true label '{name}' in row {i + 1} is not among the classes {classnames}")
        labels[i, index[name]] = 1.0
    return labels


_ROWS_PER_BLOCK = 8192


def _csv_field(text: str) -> str:
    """One field as ``csv.writer`` (QUOTE_MINIMAL) writes it."""
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _name_column(rows: np.ndarray, classnames: list[str], multilabel: bool, threshold: float = 0.5) -> list[str]:
    """Class names per row: the argmax (NaN ignored) for single-label, every class at or above ``threshold``
    ``|``-joined for multi-label."""
    rows = np.asarray(rows, dtype=np.float64)
    if not multilabel:
        return [classnames[i] for i in np.nanargmax(rows, axis=1).tolist()]
    with np.errstate(invalid="ignore"):
        on = (rows >= threshold) & ~np.isnan(rows)
    return ["|".join(c for c, v in zip(classnames, r) if v) for r in on.tolist()]


def _decision_column(probs: np.ndarray, decisions: np.ndarray | None, classnames: list[str],
                     multilabel: bool) -> list[str]:
    """The ``predicted`` column: ``decisions`` (indices or (N, C) booleans) when given, else argmax / p >= 0.5."""
    if decisions is None:
        return _name_column(probs, classnames, multilabel)
    if multilabel:
        return ["|".join(c for c, d in zip(classnames, r) if d) for r in np.asarray(decisions).tolist()]
    return [classnames[int(d)] for d in np.asarray(decisions).tolist()]
