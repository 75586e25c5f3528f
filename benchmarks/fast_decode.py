"""``--fast-decode`` on radiograph-sized JPEGs (run by hand): decode speed and how much the embeddings move.

Real chest X-rays are 2-3k px; the copies in $MEDVLKIT_DATA were shrunk to 224 px, so this writes ``--n`` of
Kermany's test images upscaled (Lanczos) to ``--size`` px JPEGs (quality 95) in a temporary folder. It prints, for a
full decode and for the reduced-scale one, the decode-alone rate (the loader workers, no model) and the rate of
``embed_images`` with ``lite``, each the median of ``--repeats``, and the largest difference between the two
paths' unit embeddings (max abs and the smallest cosine).

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/fast_decode.py [--n 64] [--size 2500] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from throughput import _median_rate


def _decode_all(ds, pre, fast: bool, workers: int) -> None:
    """Read, decode, resize and crop every image in the loader workers, without the model."""
    from medvlkit.engine.pixels import view_loader

    draft = pre.cfg.decode_size() if fast else None
    for _ in view_loader(ds, pre, batch_size=32, num_workers=workers, draft=draft):
        pass


def main() -> None:
    from medvlkit import create_model, load_dataset
    from medvlkit.engine.features import embed_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    src = load_dataset(Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia", split="test")
    model = create_model("lite")
    pre = model.image_preprocessor
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            im = src.load_image(i).convert("L").resize((args.size, args.size), Image.Resampling.LANCZOS)
            im.save(Path(tmp) / f"x{i:03d}.jpeg", quality=95)
        ds = load_dataset(tmp, format="folder")
        print(f"{len(ds)} {args.size}x{args.size} JPEGs, workers {args.workers}, median of {args.repeats}, "
              f"lite on {model.device}")
        vectors = {}
        for fast in (False, True):
            decode_rate = _median_rate(lambda f=fast: _decode_all(ds, pre, f, args.workers), len(ds), args.repeats)
            embed_rate = _median_rate(lambda f=fast: vectors.__setitem__(f, embed_images(
                model, ds, batch_size=32, num_workers=args.workers, cache=False, progress=False,
                fast_decode=f).vectors), len(ds), args.repeats)
            print(f"{'fast' if fast else 'full'} decode: decode alone {decode_rate:.1f} img/s, embed "
                  f"{embed_rate:.1f} img/s")
        a, b = vectors[False], vectors[True]
        print(f"embedding difference fast vs full: max abs {np.abs(a - b).max():.2e}, smallest cosine "
              f"{(a * b).sum(1).min():.6f}")


if __name__ == "__main__":
    main()
