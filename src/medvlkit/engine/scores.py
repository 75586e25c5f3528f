"""Class scores kept without loss: natural-log probabilities in float64.

A CLIP-like model multiplies cosines by a logit scale near 100, so probabilities computed in float32 (or written
with 6 decimals) reach exactly 1.0 once two classes differ by 0.17 in cosine, and every such image ties: the
ranking that AUROC measures is lost. Log-probabilities in float64 keep it (a log-probability of -1e-30 is still
distinct from -1e-31). Every task hands its scores to :mod:`medvlkit.tasks.evaluate` and to ``predictions.csv`` in this
form; probabilities are derived from them, never the other way round.
"""

from __future__ import annotations

import numpy as np

LN2 = float(np.log(2.0))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64. (N, C) -> (N, C)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(1 / (1 + exp(-x))) in float64, stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(-np.abs(x))))


def log1mexp(log_p: np.ndarray) -> np.ndarray:
    """log(1 - p) from log p (Maechler 2012: expm1 near 0, log1p elsewhere)."""
    a = np.asarray(log_p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(a > -LN2, np.log(-np.expm1(a)), np.log1p(-np.exp(a)))


def logit_from_log_prob(log_p: np.ndarray) -> np.ndarray:
    """Log-odds log(p / (1 - p)) from log p, without rounding p to 1."""
    return np.asarray(log_p, dtype=np.float64) - log1mexp(log_p)


def log_probs_from_probs(probs: np.ndarray) -> np.ndarray:
    """Log of probabilities given as such (e.g. another tool's CSV). Zero maps to the log of the smallest normal
    float, so the ranking of the given values is kept."""
    p = np.asarray(probs, dtype=np.float64)
    return np.log(np.maximum(p, np.finfo(np.float64).tiny))


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite vectors (a diverged or broken model): nothing computed from them means anything.

    Raises:
        MedvlkitError: naming ``what`` and the first bad row.
    """
    from medvlkit.errors import MedvlkitError

    bad = ~np.isfinite(np.asarray(x)).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise MedvlkitError(f"{int(bad.sum())} of {len(x)} {what} hold NaN or infinite values (first: row "
                            f"{int(np.flatnonzero(bad)[0])}); the model produced invalid outputs (diverged weights, "
                            "or fp16 overflow: try --precision fp32, or --amp fp32 when fine-tuning)")
