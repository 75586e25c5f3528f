"""Metrics per subgroup (sex, age band, view, scanner, site...) with bootstrap CIs, and the largest gap between
subgroups with a PAIRED bootstrap CI, from arrays (no file IO).

Paired: every resample draws the whole set once (:func:`medvlkit.engine.bootstrap.resample_weights`, the resamples
of every other interval), and each subgroup's metric is computed on its own rows of that one draw, so the gap's
interval carries the correlation between the groups' estimates instead of treating them as separate studies.
Subgroups smaller than ``min_size`` are listed, not scored; images without a value count in no subgroup.
"""

from __future__ import annotations

import numpy as np

from medvlkit.engine.bootstrap import (
    multilabel_plan,
    multilabel_samples,
    resample_weights,
    single_label_plan,
    single_label_samples,
)
from medvlkit.engine.metrics import multilabel_metrics, percentile_ci, single_label_metrics
from medvlkit.errors import MedvlkitError

SINGLE_KEYS = ["accuracy", "balanced_accuracy", "macro_f1", "auroc"]
MULTI_KEYS = ["auroc", "average_precision", "macro_f1", "macro_accuracy"]


def band_names(edges: list[float]) -> list[str]:
    """The names of the bands between ``edges``, youngest first."""
    return [f"<{edges[0]:g}"] + [f"{a:g}-{b - 1:g}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g}"]


def age_bands(values: list[str | None], edges: list[float]) -> list[str | None]:
    """Numbers as bands between increasing ``edges``: ``<18``, ``18-39``, ``40-64``, ``>=65`` for edges 18, 40, 65
    (whole years: a band ``a-b`` holds a <= age < b + 1); None for a missing or non-numeric value."""
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise MedvlkitError(f"--age-bands {edges}: give increasing numbers, e.g. 18,40,65")
    names = band_names(edges)
    out: list[str | None] = []
    for v in values:
        try:
            x = float(str(v).strip().rstrip("yY").strip()) if v is not None else float("nan")
        except ValueError:
            x = float("nan")
        out.append(None if not np.isfinite(x) else names[int(np.searchsorted(edges, x, side="right"))])
    return out


def numeric_share(values: list[str | None]) -> float:
    """The share of known values that read as numbers (a column of ages, not of categories)."""
    known = [v for v in values if v is not None]
    if not known:
        return 0.0
    ok = 0
    for v in known:
        try:
            float(v)
            ok += 1
        except ValueError:
            pass
    return ok / len(known)


def subgroup_metrics(kind: str, arrays: tuple[np.ndarray, ...], classnames: list[str], groups: list[str | None],
                     min_size: int = 30, gap_metric: str = "auroc", n_bootstrap: int = 1000, seed: int = 0,
                     alpha: float = 0.05, order: list[str] | None = None) -> dict:
    """Per-subgroup metrics and the largest gap.

    Args:
        kind: ``single`` or ``multi``, as :func:`medvlkit.engine.bootstrap.bootstrap_classification`.
        arrays: (y (N,), scores (N, C), decisions (N,)) for ``single``; (labels (N, C), scores, thresholds (C,))
            for ``multi``.
        classnames: the columns' class names.
        groups: (N,) subgroup of each row; None: unknown (in no subgroup).
        min_size: subgroups with fewer rows are listed, not scored.
        gap_metric: the metric whose largest between-group difference is reported.
        order: the subgroups' order where it means something (age bands); default: sorted by name.

    Returns:
        ``{"groups": {name: {"n", "metrics", "ci"}}, "too_small": {name: n}, "n_unknown", "gap": {"metric", "high",
        "low", "value", "ci"} or None, "min_size"}``; the whole set first as group ``all``.
    """
    single = kind == "single"
    keys = SINGLE_KEYS if single else MULTI_KEYS
    point, plan, samples_of = (single_label_metrics, single_label_plan, single_label_samples) if single else \
        (multilabel_metrics, multilabel_plan, multilabel_samples)
    if gap_metric not in keys:
        raise MedvlkitError(f"--subgroup-metric {gap_metric}: valid for this data: {', '.join(keys)}")
    n = len(arrays[0])
    if len(groups) != n:
        raise MedvlkitError(f"{len(groups)} subgroup values for {n} predictions")
    g = np.array(["" if v is None else str(v) for v in groups], dtype=object)
    present = {v for v in g if v != ""}
    names = [v for v in order if v in present] + sorted(present - set(order)) if order else sorted(present)
    sizes = {name: int((g == name).sum()) for name in names}
    scored = [name for name in names if sizes[name] >= min_size]
    rows = {"all": np.arange(n)} | {name: np.flatnonzero(g == name) for name in scored}
    sub = {name: (arrays[0][idx], arrays[1][idx], arrays[2][idx] if single else arrays[2])
           for name, idx in rows.items()}  # multi-label thresholds are per class, not per row
    points = {name: point(*sub[name][:2], classnames, sub[name][2]) for name in rows}
    plans = {name: plan(*sub[name]) for name in rows}
    samples: dict[str, dict[str, list[np.ndarray]]] = {name: {k: [] for k in keys} for name in rows}
    for w in resample_weights(n, n_bootstrap, seed) if n_bootstrap else ():
        for name, idx in rows.items():
            got = samples_of(w[idx], *sub[name], plans[name])
            for k in keys:
                samples[name][k].append(got[k])
    stacked = {name: {k: np.concatenate(v) for k, v in s.items()} for name, s in samples.items()} if n_bootstrap \
        else {}
    out: dict = {"min_size": min_size, "n_unknown": int((g == "").sum()), "too_small": {
        name: sizes[name] for name in names if sizes[name] < min_size}, "groups": {}, "gap": None}
    for name, idx in rows.items():
        out["groups"][name] = {"n": len(idx), "metrics": {k: points[name].get(k) for k in keys},
                               "ci": percentile_ci(stacked[name], alpha) if stacked else {}}
    valued = [(points[name][gap_metric], name) for name in scored if np.isfinite(points[name].get(gap_metric, np.nan))]
    if len(valued) >= 2:
        (lo_v, lo), (hi_v, hi) = min(valued), max(valued)
        gap = {"metric": gap_metric, "high": hi, "low": lo, "value": hi_v - lo_v, "ci": None}
        if stacked:
            diff = stacked[hi][gap_metric] - stacked[lo][gap_metric]
            gap["ci"] = percentile_ci({"d": diff}, alpha)["d"]
        out["gap"] = gap
    return out
