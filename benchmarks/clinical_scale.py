"""Issue 30's clinical figures at ChestX-ray14 scale (25,596 x 14, CXR14's official test split size, CXR14-shaped
random data from ``eval_scale.cxr14_like``), 1000 bootstrap resamples each, timed one after another:

- operating points: 4 targets per class (sensitivity at specificity 0.9/0.95, the reverse), thresholds from a
  validation set of the same size, test rates with CIs;
- subgroups: 3 subgroups (e.g. view position) and the paired gap, multi-label macro metrics with CIs;
- conformal: split conformal on a 5-class single-label set of the same size (fit, sets, coverage with CIs).

    python benchmarks/clinical_scale.py

Run by hand; the numbers go into the closing notes (machine, date), never into tests.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from eval_scale import CLASSES, cxr14_like  # noqa: E402

from medvlkit.engine.conformal import coverage_report, fit_conformal, prediction_sets  # noqa: E402
from medvlkit.engine.operating_points import per_class_operating_points  # noqa: E402
from medvlkit.engine.subgroups import subgroup_metrics  # noqa: E402

N = 25_596


def main() -> None:
    labels, log_probs = cxr14_like(N, seed=0)
    val_labels, val_log_probs = cxr14_like(N, seed=1)
    t = time.perf_counter()
    points = per_class_operating_points(val_labels, val_log_probs, labels, log_probs, CLASSES, True)
    print(f"operating points, {N} x 14, 4 targets, 1000 resamples: {time.perf_counter() - t:.1f} s "
          f"({len(points['classes'])} classes scored)")
    groups = list(np.random.default_rng(2).choice(["PA", "AP", "lateral"], N))
    t = time.perf_counter()
    out = subgroup_metrics("multi", (labels, log_probs, np.full(14, np.log(0.5))), CLASSES, groups)
    print(f"subgroups, {N} x 14, 3 groups + all, paired gap, 1000 resamples: {time.perf_counter() - t:.1f} s "
          f"(gap {out['gap']['value']:.4f} {out['gap']['ci']})")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 2 * N)
    logits = rng.normal(size=(2 * N, 5))
    logits[np.arange(2 * N), y] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.eye(5)[y]
    t = time.perf_counter()
    q = fit_conformal(onehot[:N], p[:N], 0.9, "class")
    rep = coverage_report(onehot[N:], prediction_sets(p[N:], q), [str(c) for c in range(5)])
    print(f"conformal, {N} x 5, class-conditional, coverage with 1000 resamples: {time.perf_counter() - t:.1f} s "
          f"(coverage {rep['coverage']:.4f} {rep['ci']['coverage']})")


if __name__ == "__main__":
    main()
