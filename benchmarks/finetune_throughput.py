"""Contrastive fine-tuning throughput (samples/s) and peak memory of ``lite`` on CPU, with and without GradCache.

Each configuration runs in its own process (so its peak resident memory is its own): the real ``lite`` model
with LoRA on both towers (``--lora default``), real chest X-rays from $MEDVLKIT_DATA preprocessed up front
(so image decoding is not timed), captions from the pneumonia phrasings, ``--steps`` timed optimizer steps after
one warm-up step. Peak memory is the process's maximum RSS minus its RSS just before the first step.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/finetune_throughput.py [--batch-size 64] [--chunk 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(batch_size: int, chunk: int, steps: int, lora: str | None) -> dict:
    import torch

    from medvlkit import create_model, load_dataset
    from medvlkit.engine.distributed import World
    from medvlkit.engine.losses import pair_targets
    from medvlkit.tasks.finetune import FinetuneConfig
    from medvlkit.tasks.finetune.data import caption_pools, pick_captions
    from medvlkit.tasks.finetune.loop import prepare_model, set_train_mode
    from medvlkit.tasks.finetune.steps import contrastive_step

    torch.manual_seed(0)
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia"
    ds = load_dataset(data, split="test")
    ds = ds.subset(list(range(0, len(ds), max(1, len(ds) // batch_size)))[:batch_size])
    model = create_model("lite")
    prepare_model(model, FinetuneConfig(lora=lora))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    pixels = model.preprocess([ds.load_image(i) for i in range(len(ds))])
    pools, groups = caption_pools(ds)
    idx = list(range(len(ds)))
    captions = pick_captions(pools, idx, 0, 0)
    tokens = model.tokenize(captions)
    targets = torch.from_numpy(pair_targets([groups[i] for i in idx], captions))
    set_train_mode(model, None)
    base_rss = _rss_mb()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        contrastive_step(model, pixels, tokens, targets, World(), grad_cache=chunk)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch_size": len(ds), "grad_cache_chunk": chunk, "lora": lora, "steps": steps,
            "samples_per_s": len(ds) * len(times) / sum(times), "seconds_per_step": sum(times) / len(times),
            "rss_before_mb": round(base_rss), "peak_rss_mb": round(peak), "peak_extra_mb": round(peak - base_rss),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16, help="GradCache chunk size")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora", default="default", help="--lora text, or 'full' for full fine-tuning")
    ap.add_argument("--worker", nargs=3, metavar=("BATCH", "CHUNK", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    lora = None if args.lora == "full" else args.lora
    if args.worker:
        b, c, s = map(int, args.worker)
        print(json.dumps(worker(b, c, s, lora)))
        return
    rows = []
    for chunk in (0, args.chunk):
        cmd = [sys.executable, __file__, "--lora", args.lora, "--worker", str(args.batch_size), str(chunk),
               str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(json.dumps(rows[-1]))
    print("\n| GradCache chunk | batch | samples/s | s/step | peak extra RSS (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['grad_cache_chunk'] or 'off'} | {r['batch_size']} | {r['samples_per_s']:.2f} | "
              f"{r['seconds_per_step']:.1f} | {r['peak_extra_mb']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
