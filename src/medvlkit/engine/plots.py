"""Plots as PNG bytes (matplotlib Figures rendered with Agg, pyplot untouched): confusion matrix, ROC curves,
reliability diagram."""

from __future__ import annotations

import io

import numpy as np


def _figure(width: float = 4.2, height: float = 3.6):
    """A standalone matplotlib ``Figure`` and its axes: no pyplot state, no global backend switch (a caller's
    interactive backend and open figures are left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")  # Figure.savefig renders PNG with the Agg canvas itself
    return buf.getvalue()


def confusion_matrix_png(cm: list[list[int]], classnames: list[str], title: str = "confusion matrix") -> bytes:
    """Counts with row-normalised colour (rows: true class, columns: predicted)."""
    fig, ax = _figure()
    counts = np.asarray(cm)
    frac = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classnames)), classnames, rotation=30, ha="right")
    ax.set_yticks(range(len(classnames)), classnames)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def roc_curve_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (from the top score down)."""
    from medvlkit.engine.metrics import binary_clf_curve

    tps, fps = binary_clf_curve(y, score)
    return np.r_[0.0, fps / max(fps[-1], 1)], np.r_[0.0, tps / max(tps[-1], 1)]


def thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a monotone curve for drawing (a 100k-image ROC has 100k steps; a figure a
    few hundred pixels wide shows 2,000 evenly spaced ones, with both ends, identically)."""
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, len(x) - 1, max_points).round().astype(int), len(x) - 1])
    return x[keep], y[keep]


def roc_png(labels: np.ndarray, probs: np.ndarray, classnames: list[str], title: str = "ROC") -> bytes:
    """One ROC curve per class (one-vs-rest; NaN labels masked), AUROC in the legend."""
    from medvlkit.engine.metrics import auroc_binary

    fig, ax = _figure()
    for c, name in enumerate(classnames):
        known = ~np.isnan(labels[:, c])
        y, p = labels[known, c] == 1, probs[known, c]
        if y.any() and (~y).any():
            fpr, tpr = thin_curve(*roc_curve_points(y, p))
            ax.plot(fpr, tpr, label=f"{name} ({auroc_binary(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def reliability_png(curves: dict[str, dict[str, list[float]]], title: str = "reliability") -> bytes:
    """Reliability diagram: accuracy per confidence bin, one line per curve (e.g. before / after)."""
    fig, ax = _figure()
    for name, r in curves.items():
        conf, acc = np.asarray(r["confidence"], dtype=float), np.asarray(r["accuracy"], dtype=float)  # null -> NaN
        ok = ~np.isnan(conf)
        ax.plot(conf[ok], acc[ok], marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def decision_curve_png(curve: dict[str, list[float]], name: str) -> bytes:
    """Decision curve of one binary question: net benefit of the model, of treating all and of treating none over
    the threshold probability (the y axis starts just below zero: treat-all falls far below it at high
    thresholds)."""
    fig, ax = _figure()
    t = np.asarray(curve["threshold"], dtype=float)
    model = np.asarray(curve["model"], dtype=float)
    ax.plot(t, model, label="model")
    ax.plot(t, np.asarray(curve["treat_all"], dtype=float), ls="--", label="treat all")
    ax.plot(t, np.zeros_like(t), c="grey", lw=0.8, label="treat none")
    top = max(float(np.nanmax(model)), float(np.nanmax(curve["treat_all"])), 0.01)
    ax.set_ylim(-0.1 * top, 1.1 * top)
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(f"decision curve: {name}")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def forest_png(rows: list[tuple[str, float, float, float]], metric: str, title: str = "subgroups") -> bytes:
    """Forest plot: one row per (label, value, CI low, CI high), value as a dot and its CI as a bar; a dashed line at
    the first row's value (the whole set when it comes first)."""
    longest = max((len(r[0]) for r in rows), default=10)
    fig, ax = _figure(3.2 + 0.065 * longest, 0.9 + 0.32 * len(rows))  # room for the labels
    ys = np.arange(len(rows))[::-1]
    for y, (_, v, lo, hi) in zip(ys, rows):
        if lo is not None and hi is not None and np.isfinite([lo, hi]).all():
            ax.plot([lo, hi], [y, y], c="#444", lw=1.2)
        ax.plot([v], [y], "s", c="#1f5fa8", ms=5)
    if rows:
        ax.axvline(rows[0][1], ls="--", c="grey", lw=0.8)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(title)
    return _png(fig)


def fewshot_curve_png(curves: dict[str, list[tuple[int, float, float]]], zeroshot: float | None, metric: str,
                      title: str = "few-shot") -> bytes:
    """A metric against shots per class (log2 axis), one line per method with its SD over seeds as error bars,
    and the zero-shot value as a dashed line."""
    fig, ax = _figure(5.0, 3.6)
    for name, points in curves.items():
        points = sorted(points)
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o", ms=3,
                    capsize=2, lw=1.2, label=name)
    if zeroshot is not None:
        ax.axhline(zeroshot, ls="--", c="grey", lw=0.9, label="zero-shot")
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for points in curves.values() for p in points})
    if ticks:
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
