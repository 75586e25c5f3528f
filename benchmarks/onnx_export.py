"""ONNX export (run by hand): CPU embed throughput of ``onnx:`` vs PyTorch, and what int8 costs in accuracy.

In one run, on the Kermany chest X-ray test split ($MEDVLKIT_DATA, 624 images):
1. for ``lite`` and a ViT-B/32-shaped CLIP (random weights, built offline): export to ONNX (fp32), then time
   ``embed_images`` over the images with the PyTorch model and the ``onnx:`` model, alternating, cache off, the
   median of ``--repeats`` each; print images/s and the ratio;
2. ``lite`` exported with ``--quantize int8``: its embed rate, and the zero-shot AUROC (prompt set ``pneumonia``) of
   fp32 PyTorch vs int8 ONNX on the same images, with a paired bootstrap 95% CI of the difference (1,000
   resamples of the images, seed 0).

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/onnx_export.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rates(models: dict, ds, workers: int, repeats: int) -> dict[str, float]:
    """Median images/s of embed_images per model, runs interleaved so drift hits all alike."""
    from medvlkit.engine.features import embed_images

    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            embed_images(model, ds, cache=False, num_workers=workers, progress=False)
            times[name].append(time.perf_counter() - start)
    return {name: len(ds) / statistics.median(t) for name, t in times.items()}


def _auroc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0):
    """AUROC(a) - AUROC(b) on the same items, with a paired percentile bootstrap 95% CI."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    return roc_auc_score(y, a) - roc_auc_score(y, b), np.percentile(diffs, [2.5, 97.5])


def main() -> None:
    import torch
    from embed_throughput import vit_b32_dir

    from medvlkit import create_model, load_dataset
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.tasks.export import export_onnx
    from medvlkit.tasks.zeroshot import zeroshot_classify

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", default="lite,vit-b32")
    args = ap.parse_args()
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia"
    ds = load_dataset(data, split="test")
    import onnxruntime

    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}; {len(ds)} Kermany test X-rays; loader workers {args.workers}; median of "
          f"{args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for row in args.rows.split(","):
            spec = f"hf:{vit_b32_dir(tmp / 'vitb32')}" if row == "vit-b32" else row
            torch_model = create_model(spec, engine="torch")  # PyTorch, not lite's default ONNX Runtime tower
            m = export_onnx(torch_model, tmp / f"{row}-onnx")
            v = m["verification"]
            models = {"pytorch": torch_model, "onnx": create_model(f"onnx:{tmp / f'{row}-onnx'}")}
            if row == "lite":
                export_onnx(torch_model, tmp / "lite-int8", quantize="int8")
                models["onnx int8"] = create_model(f"onnx:{tmp / 'lite-int8'}")
            rates = _rates(models, ds, args.workers, args.repeats)
            print(f"{row}: export max abs diff image {v['image_max_abs_diff']:.1e}, text {v['text_max_abs_diff']:.1e}; "
                  + ", ".join(f"{k} {r:.1f} img/s" for k, r in rates.items())
                  + "; " + ", ".join(f"{k} / pytorch = {r / rates['pytorch']:.2f}x" for k, r in rates.items()
                                    if k != "pytorch"))
            if row == "lite":
                prompts = load_prompt_set("pneumonia")
                res = {k: zeroshot_classify(models[k], ds, prompts, cache=False, num_workers=args.workers,
                                            progress=False) for k in ("pytorch", "onnx int8")}
                col = [c.lower() for c in res["pytorch"].classnames].index("pneumonia")
                y = res["pytorch"].labels[:, col]
                diff, ci = _auroc_difference(y, res["onnx int8"].probs[:, col], res["pytorch"].probs[:, col])
                from sklearn.metrics import roc_auc_score

                print(f"lite zero-shot pneumonia AUROC on the test split: pytorch fp32 "
                      f"{roc_auc_score(y, res['pytorch'].probs[:, col]):.4f}, onnx int8 "
                      f"{roc_auc_score(y, res['onnx int8'].probs[:, col]):.4f}; int8 - fp32 = {diff:+.4f} "
                      f"(paired bootstrap 95% CI {ci[0]:+.4f} .. {ci[1]:+.4f}); predictions that differ: "
                      f"{int((res['pytorch'].probs.argmax(1) != res['onnx int8'].probs.argmax(1)).sum())}/{len(y)}")


if __name__ == "__main__":
    main()
