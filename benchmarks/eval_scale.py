"""Evaluation at ChestX-ray14 scale: bootstrap CIs, predictions.csv, the report and zero-shot over cached
embeddings, timed at N = 1k, 25,596 (CXR14's official test split) and 112,120 (all of CXR14) rows of 14 classes.

Results are random but seeded and CXR14-shaped (14 findings, prevalences 1-18%, 3% unknown labels). Each size runs
in its own process so that its peak RSS is its own. The per-resample bootstrap loop that medvlkit used before
(``metrics.bootstrap_ci``) is timed side by side where it finishes in reasonable time (``--old-max``), and its
intervals are compared with the vectorised ones.

    python benchmarks/eval_scale.py                       # 1k, 25,596, 112,120; old loop up to 25,596
    python benchmarks/eval_scale.py --sizes 1000 --old-max 1000
    python benchmarks/eval_scale.py --zeroshot 100000     # zero-shot with CIs over 100k cached embeddings

Run by hand; the numbers go into the closing notes (machine, date), never into tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
           "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
PREVALENCE = [0.10, 0.025, 0.12, 0.18, 0.05, 0.056, 0.013, 0.047, 0.042, 0.02, 0.022, 0.015, 0.03, 0.002]


def cxr14_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 14) labels (1/0, 3% NaN) and float64 log-probabilities that rank positives higher (AUROC ~0.8)."""
    from medvlkit.engine.scores import log_sigmoid

    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < np.array(PREVALENCE)).astype(np.float64)
    logits = rng.normal(-2.0, 1.0, (n, 14)) + 1.2 * labels
    labels[rng.random((n, 14)) < 0.03] = np.nan
    return labels, log_sigmoid(logits)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(n: int, resamples: int, old_max: int) -> dict:
    """Every step at one size, in this process."""
    from medvlkit.apps.report import write_report
    from medvlkit.engine.metrics import bootstrap_ci, multilabel_metrics
    from medvlkit.engine.results import write_predictions, write_result
    from medvlkit.tasks.evaluate import CI_KEYS_MULTI, evaluate_probs

    labels, log_probs = cxr14_like(n)
    out: dict = {"n": n}
    t = time.perf_counter()
    ev = evaluate_probs(labels, None, CLASSES, True, resamples, 0, log_probs=log_probs)
    out["evaluate_with_ci_s"] = time.perf_counter() - t
    if n <= old_max:
        thr = np.log(np.full(14, 0.5))
        t = time.perf_counter()
        old = bootstrap_ci(lambda y, p: multilabel_metrics(y, p, CLASSES, thr), (labels, log_probs), resamples, 0,
                           keys=CI_KEYS_MULTI)
        out["old_loop_bootstrap_s"] = time.perf_counter() - t
        out["max_ci_difference"] = max(abs(a - b) for k in CI_KEYS_MULTI for a, b in zip(old[k], ev.ci[k]))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        items = [f"/data/cxr14/images/{i:08d}_000.png" for i in range(n)]
        t = time.perf_counter()
        write_predictions(run, items, CLASSES, log_probs, labels, True)
        write_result(run, dataset="cxr14-like", model="synthetic", task="zeroshot_classification",
                     metrics=ev.metrics, ci=ev.ci, extra={"mode": "pos_neg", "classnames": CLASSES} | ev.extra)
        out["write_predictions_s"] = time.perf_counter() - t
        out["predictions_mib"] = (run / "predictions.csv").stat().st_size / 2**20
        t = time.perf_counter()
        write_report([run], Path(tmp) / "report")
        out["report_s"] = time.perf_counter() - t
    out["peak_rss_mib"] = _peak_mib()
    return out


def zeroshot_at_scale(n: int, resamples: int) -> dict:
    """Zero-shot (14 pos/neg classes of `lite`) over n cached unit vectors, scored with CIs; cold then warm text
    cache. The image vectors are random: this times the scoring path, not the model's accuracy."""
    from medvlkit import create_model, load_prompt_set
    from medvlkit.data.dataset import ImageDataset
    from medvlkit.engine.features import ImageEmbeddings
    from medvlkit.tasks.zeroshot import save_zeroshot, zeroshot_classify

    model = create_model("lite")
    prompts = load_prompt_set("chest_xray_findings")
    names = prompts.classnames[:14]
    labels, _ = cxr14_like(n)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [f"/data/cxr14/images/{i:08d}_000.png" for i in range(n)]
    ds = ImageDataset(items, "cxr14-like", names, labels, multilabel=True, split="test")
    emb = ImageEmbeddings(vectors, np.arange(n), items, n_cached=n)
    out: dict = {"n": n}
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("cold", "warm"):
            t = time.perf_counter()
            res = zeroshot_classify(model, ds, prompts, embeddings=emb, cache=True, cache_dir=tmp)
            classified = time.perf_counter() - t
            save_zeroshot(res, ds, model, Path(tmp) / run, {}, resamples, 0)
            out[f"{run}_total_s"] = time.perf_counter() - t
            out[f"{run}_classify_s"] = classified
    out["peak_rss_mib"] = _peak_mib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,25596,112120")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--old-max", type=int, default=25596, help="time the old per-resample loop up to this N")
    ap.add_argument("--zeroshot", type=int, default=100000, help="rows for the zero-shot step (0: skip)")
    ap.add_argument("--_one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_zs", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(one_size(args._one, args.resamples, args.old_max)))
        return
    if args._zs:
        print(json.dumps(zeroshot_at_scale(args._zs, args.resamples)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--_one", str(n), "--resamples", str(args.resamples),
                               "--old-max", str(args.old_max)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        per_image_kib = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 / (b["n"] - a["n"])
        print(f"peak RSS growth from {a['n']} to {b['n']} rows: {per_image_kib:.2f} KiB per row")
    if args.zeroshot:
        proc = subprocess.run([sys.executable, __file__, "--_zs", str(args.zeroshot), "--resamples",
                               str(args.resamples)], capture_output=True, text=True, check=True)
        print(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
