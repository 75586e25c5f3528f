"""Search index kinds side by side (run by hand): build time, query latency and recall@10 against exact search.

Two parts:
1. Real: ``medvlkit index --recursive --kind K`` over every image file in $MEDVLKIT_DATA with ``lite`` (the first
   kind fills the embedding cache; the others reuse it), printing what ``index`` itself measured.
2. Scale: ``--n`` clustered unit vectors of ``lite``'s width (256), random but seeded (no corpus of millions of
   images exists here): each kind built, 1,000 single-vector queries timed one by one, recall@10 vs exact.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/index_kinds.py [--n 200000] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medvlkit.tasks.search import INDEX_KINDS, make_index, recall_vs_exact


def real(data: Path) -> None:
    from medvlkit.apps.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        for kind in INDEX_KINDS:
            out = Path(tmp) / kind
            start = time.perf_counter()
            assert main(["index", "--data", str(data), "--recursive", "--kind", kind, "--out", str(out), "-q"]) == 0
            m = json.loads((out / "result.json").read_text())["metrics"]
            print(f"real {kind}: {m['n_images']} images, {time.perf_counter() - start:.1f} s wall, "
                  f"recall@10 vs exact {m.get('recall@10_vs_exact', 1.0):.4f}")


def scale(n: int, dim: int = 256, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(16, n // 500), dim))
    x = (centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.permutation(n)[:1000]]
    for kind in INDEX_KINDS:
        start = time.perf_counter()
        index, params = make_index(x, kind)
        build = time.perf_counter() - start
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q[None], 10)
            times.append(time.perf_counter() - t)
        print(f"scale {kind} ({n:,} x {dim}, {params}): build {build:.1f} s, query median "
              f"{1000 * statistics.median(times):.3f} ms, p90 {1000 * np.percentile(times, 90):.3f} ms, "
              f"recall@10 vs exact {recall_vs_exact(index, x):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    if not args.skip_real:
        real(Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")))
    scale(args.n)


if __name__ == "__main__":
    main()
