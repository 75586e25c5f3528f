"""Issue 31, the CPU path: how fast can ``lite``'s image tower (EfficientNet-Lite0, 224 px) run on this CPU, per
engine, in one process on the same batch, runs interleaved (median of ``--repeats``)?

- PyTorch eager, NCHW, the batch whole and in micro-batches (``LiteModel.cpu_micro_batch``), under
  ``torch.inference_mode``;
- PyTorch eager, channels_last (weights and input);
- ONNX Runtime (CPU provider, ``intra_op_num_threads`` = torch's threads) on the tower exported by medvlkit's
  exporter (:func:`medvlkit.models.onnx_graph.export_graph`, ``torch.export``), its output compared with PyTorch's.

Decoding and preprocessing are left out here. ``--embed N`` times the whole ``embed_images`` path on the first N
Kermany test films ($MEDVLKIT_DATA), 2 loader workers, cache off, runs interleaved, for each engine ``lite`` can run
on: the default (``create_model("lite")``: ``--engine auto``), ``--engine torch`` (micro-batches) and the batch
whole (``cpu_micro_batch = 0``, the path before issue 31), and ``onnx:DIR`` (both towers exported by ``medvlkit
export``); it prints each rate, the default's ratio to the fastest, and each one's largest difference to PyTorch's
unit embeddings (the issue's targets: >= 0.8x, <= 1e-4).

``--rn50`` times OpenAI's ModifiedResNet-50 tower (CLIP RN50, PMC-CLIP; random weights) the same way: the batch
whole and in parts of 16, 8, 4 and 2, with the largest difference to the whole batch.

    python benchmarks/lite_engines.py [--batch 64] [--repeats 5] [--embed 624] [--rn50]

Run by hand; the numbers go into the closing notes (machine, date), never into tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class _Tower(torch.nn.Module):
    """The tower as ``embed_images`` uses it up to the pooled features: (B, 3, 224, 224) -> (B, 1280)."""

    def __init__(self, tower: torch.nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.extract_features(pixels).mean(dim=(2, 3))


def main() -> None:
    import onnxruntime as ort

    from medvlkit import create_model
    from medvlkit.models.onnx_graph import export_graph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--embed", type=int, default=0)
    ap.add_argument("--rn50", action="store_true")
    args = ap.parse_args()
    if args.rn50:
        rn50_parts(args.batch, args.repeats)
        return
    tower = _Tower(create_model("lite", engine="torch").image_tower).eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tower.onnx"
        with torch.no_grad():
            export_graph(tower, (x[:2],), path, ["pixels"], {"pixels": {0: "batch"}}, opset=18, output_name="features")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        last = _Tower(create_model("lite", engine="torch").image_tower).eval().to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        engines = {"torch eager NCHW": lambda: tower(x),
                   **{f"torch micro-batch {k}": (lambda k=k: torch.cat([tower(p) for p in x.split(k)]))
                      for k in (2, 4, 8)},
                   "torch channels_last": lambda: last(x_last),
                   "onnxruntime": lambda: torch.from_numpy(session.run(None, {"pixels": x.numpy()})[0])}
        times: dict[str, list[float]] = {k: [] for k in engines}
        outs = {}
        with torch.inference_mode():
            for name, fn in engines.items():
                outs[name] = fn()  # warm-up, and the output compared below
            for _ in range(args.repeats):
                for name, fn in engines.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    base = args.batch / statistics.median(times["torch eager NCHW"])
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}, torch "
          f"{torch.__version__}, onnxruntime {ort.__version__}")
    for name in engines:
        rate = args.batch / statistics.median(times[name])
        diff = float(np.abs(outs[name].numpy() - outs["torch eager NCHW"].numpy()).max())
        print(f"{name:22s} {rate:7.1f} img/s  {rate / base:5.2f}x  max |diff| vs eager {diff:.1e}")
    if args.embed:
        embed_end_to_end(args.embed, args.repeats)


def rn50_parts(batch: int, repeats: int) -> None:
    """A random-weight ModifiedResNet-50 (224 px) on one batch: whole, and in parts, interleaved."""
    from medvlkit.models.clip_resnet import ModifiedResNet

    torch.manual_seed(0)
    tower = ModifiedResNet((3, 4, 6, 3), 1024, 32, 224, 64).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times: dict[int, list[float]] = {k: [] for k in (batch, 16, 8, 4, 2)}
    outs = {}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for k in times:
                start = time.perf_counter()
                outs[k] = torch.cat([tower(p) for p in x.split(k)])
                times[k].append(time.perf_counter() - start)
    for k, t in times.items():
        diff = float((outs[k] - outs[batch]).abs().max())
        print(f"ModifiedResNet-50, parts of {k:3d}: {batch / statistics.median(t[1:]):6.1f} img/s, max |diff| vs whole "
              f"{diff:.1e}")


def embed_end_to_end(n: int, repeats: int) -> None:
    """``embed_images`` of ``lite`` on n Kermany test films, per engine (see the module docstring)."""
    import os

    from medvlkit import create_model, load_dataset
    from medvlkit.engine.features import embed_images
    from medvlkit.tasks.export import export_onnx

    ds = load_dataset(Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia", split="test")
    ds = ds.subset(list(range(min(n, len(ds)))))
    whole = create_model("lite", engine="torch")
    whole.cpu_micro_batch = 0
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(create_model("lite", engine="torch"), Path(tmp) / "onnx")
        models = {"default (--engine auto)": create_model("lite"),
                  "--engine torch": create_model("lite", engine="torch"),
                  "torch, batch whole": whole, "onnx:DIR (medvlkit export)": create_model(f"onnx:{tmp}/onnx")}
        times: dict[str, list[float]] = {k: [] for k in models}
        vectors = {}
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                vectors[name] = embed_images(model, ds, cache=False, num_workers=2, progress=False).vectors
                times[name].append(time.perf_counter() - start)
    rate = {k: len(ds) / statistics.median(t) for k, t in times.items()}
    fastest = max(rate, key=rate.get)
    print(f"embed_images, {len(ds)} Kermany test films, 2 workers, median of {repeats}; default engine: "
          f"{models['default (--engine auto)'].engine}")
    for name in models:
        diff = float(np.abs(vectors[name] - vectors["--engine torch"]).max())
        print(f"  {name:28s} {rate[name]:6.1f} img/s  {rate[name] / rate[fastest]:5.2f}x of the fastest  max |diff| "
              f"vs --engine torch {diff:.1e}")


if __name__ == "__main__":
    main()
