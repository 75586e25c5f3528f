"""The files every run writes: ``result.json`` (CLIP_benchmark's schema plus medvlkit's fields) and
``predictions.csv``."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

RESULT_FILE = "result.json"
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
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
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


def write_result(out_dir: Path, *, dataset: str, model: str, task: str, metrics: dict, ci: dict | None = None,
                 config: dict | None = None, seed: int = 0, n_skipped: int = 0, pretrained: str = "",
                 extra: dict | None = None) -> Path:
    """Write ``out_dir/result.json``.

    Fields: ``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``, ``language`` (CLIP_benchmark) plus
    ``ci`` (95% bootstrap intervals per metric), ``config`` (the call's options), ``seed``, ``versions``,
    ``created_at`` (UTC ISO 8601), ``n_skipped`` (unreadable images left out), and any ``extra`` fields.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": "en", "ci": ci or {}, "config": config or {}, "seed": seed, "versions": versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_skipped": n_skipped}
    data.update(extra or {})
    path = out_dir / RESULT_FILE
    write_json_atomic(path, data)
    return path


def write_predictions(out_dir: Path, items: list[str], classnames: list[str], probs: np.ndarray,
                      labels: np.ndarray | None, multilabel: bool, decisions: np.ndarray | None = None) -> Path:
    """Write ``out_dir/predictions.csv``: ``file``, ``true``, ``predicted``, ``prob_<class>`` per class.

    ``true``/``predicted`` hold one class name (single-label) or ``|``-joined names (multi-label); ``true`` is
    empty when the data has no labels. ``predicted`` follows ``decisions`` when given (class indices (N,) or
    booleans (N, C), e.g. from validation-chosen thresholds), else the argmax / probability >= 0.5.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS_FILE
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "true", "predicted"] + [f"prob_{c}" for c in classnames])
        for i, item in enumerate(items):
            w.writerow([item, _names(labels[i], classnames, multilabel, 0.5) if labels is not None else "",
                        _predicted(i, probs, decisions, classnames, multilabel)]
                       + [f"{p:.6f}" for p in probs[i]])
    os.replace(tmp, path)
    return path


def _predicted(i: int, probs: np.ndarray, decisions: np.ndarray | None, classnames: list[str],
               multilabel: bool) -> str:
    if decisions is None:
        return _names(probs[i], classnames, multilabel, 0.5)
    if multilabel:
        return "|".join(c for c, d in zip(classnames, decisions[i]) if d)
    return classnames[int(decisions[i])]


def _names(row: np.ndarray, classnames: list[str], multilabel: bool, threshold: float) -> str:
    if not multilabel:
        return classnames[int(np.nanargmax(row))]
    return "|".join(c for c, v in zip(classnames, row) if not np.isnan(v) and v >= threshold)
