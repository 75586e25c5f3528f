"""Embedding throughput against its two limits, in one run: medvlkit's ``embed_images`` vs the model alone on
pre-decoded tensors vs decoding + preprocessing alone (the same loader workers, no model), and vs transformers'
``pipeline("zero-shot-image-classification")`` for the CLIP row. Run by hand; the same script runs on CUDA.

Rows: ``lite`` (the embedded model) and a CLIP with OpenAI ViT-B/32's exact architecture (random weights: pretrained
ones cannot be downloaded here; the compute per image is the real checkpoint's). Images: the first ``--n`` real
chest X-ray JPEGs of Kermany's test split ($MEDVLKIT_DATA). Every rate is images/s over the same images; each stage
is timed ``--repeats`` times and the median is printed, with the ratios the issue asks for:
medvlkit / min(model alone, decode alone), and medvlkit / pipeline.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/throughput.py [--device cpu] [--workers 2] [--batch-size 64]
       [--n 624] [--repeats 3] [--rows lite,vit-b32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def measure(model, dataset, batch_size: int, workers: int, repeats: int) -> dict[str, float]:
    """images/s of medvlkit's embedding loop, the model alone and the decode alone."""
    from medvlkit.engine.features import embed_images
    from medvlkit.engine.pixels import view_loader

    n, device = len(dataset), model.device
    rates = {"medvlkit": _median_rate(lambda: embed_images(model, dataset, batch_size=batch_size, num_workers=workers,
                                                           cache=False, progress=False), n, repeats)}

    def decode_only():
        for _ in view_loader(dataset, model.image_preprocessor, batch_size=batch_size, num_workers=workers):
            pass

    rates["decode alone"] = _median_rate(decode_only, n, repeats)
    pre = model.image_preprocessor
    pixels = torch.stack([pre.to_uint8(dataset.load_image(i)) for i in range(n)]).to(device)  # decoded up front

    @torch.inference_mode()
    def model_only():
        for s in range(0, n, batch_size):
            model.encode_image(pre.normalize(pixels[s:s + batch_size]))
        _sync(device)

    model_only()  # warm-up (allocator, kernels)
    rates["model alone"] = _median_rate(model_only, n, repeats)
    return rates


def pipeline_rate(folder: Path, dataset, device: torch.device, batch_size: int, repeats: int) -> float:
    """transformers' zero-shot image classification pipeline over the same files (two candidate labels)."""
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=str(folder), device=device)
    files = list(dataset.items)
    pipe(files[:2], candidate_labels=["normal", "pneumonia"], batch_size=batch_size)  # warm-up
    return _median_rate(lambda: pipe(files, candidate_labels=["normal", "pneumonia"], batch_size=batch_size),
                        len(files), repeats)


def main() -> None:
    from embed_throughput import vit_b32_dir

    from medvlkit import create_model, load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=624)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default="lite,vit-b32")
    args = ap.parse_args()
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia"
    ds = load_dataset(data, split="test")
    ds = ds.subset(list(range(min(args.n, len(ds)))))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, workers "
          f"{args.workers}, batch {args.batch_size}, {len(ds)} real chest X-ray JPEGs, median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            folder = vit_b32_dir(Path(tmp) / "vitb32") if row == "vit-b32" else None
            model = create_model(f"hf:{folder}" if folder else row, device=args.device)
            rates = measure(model, ds, args.batch_size, args.workers, args.repeats)
            if folder is not None:
                rates["transformers pipeline"] = pipeline_rate(folder, ds, model.device, args.batch_size,
                                                               args.repeats)
            limit = min(rates["model alone"], rates["decode alone"])
            print(f"{row}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in rates.items())
                  + f"; medvlkit / min(model, decode) = {rates['medvlkit'] / limit:.2f}"
                  + (f"; medvlkit / pipeline = {rates['medvlkit'] / rates['transformers pipeline']:.2f}"
                     if "transformers pipeline" in rates else ""))


if __name__ == "__main__":
    main()
