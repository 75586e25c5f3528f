"""Throughput of ``medvlkit embed`` on the real chest X-ray test folder (624 JPEGs), run by hand.

Pretrained CLIP weights cannot be downloaded here, so the CLIP row uses a randomly initialised model with
OpenAI ViT-B/32's exact architecture (transformers' CLIPConfig defaults): the compute per image is the same as
the real checkpoint's. The second row is the embedded ``lite`` model. Each runs ``medvlkit embed --no-cache``
in-process and reads ``images_per_second`` from its result.json.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/embed_throughput.py [--workers 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def vit_b32_dir(folder: Path) -> Path:
    """A random CLIP ViT-B/32 (224 px, patch 32, 12+12 layers) saved with save_pretrained, byte-level tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from helpers import load_clip_tokenizer, write_clip_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": 514, "eos_token_id": 513, "bos_token_id": 512, "pad_token_id": 513})
    CLIPModel(cfg).save_pretrained(folder)
    load_clip_tokenizer(write_clip_tokenizer(folder / "_tok")).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # 224 shortest edge + 224 crop, bicubic, CLIP mean/std
    return folder


def run(model: str, data: Path, out: Path, workers: int, batch_size: int) -> dict:
    from medvlkit.apps.cli import main

    rc = main(["embed", "--model", model, "--data", str(data), "--split", "test", "--out", str(out), "--no-cache",
               "--quiet", "--workers", str(workers), "--batch-size", str(batch_size)])
    assert rc == 0, f"embed failed for {model}"
    return json.loads((out / "result.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {"clip-vit-b32 architecture (random weights), 224 px": f"hf:{vit_b32_dir(tmp / 'vitb32')}",
                "lite (EfficientNet-Lite0 + heads), 224 px": "lite"}
        print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}, workers {args.workers}, "
              f"batch {args.batch_size}")
        for name, spec in rows.items():
            res = run(spec, data, tmp / name.split()[0], args.workers, args.batch_size)
            m = res["metrics"]
            print(f"{name}: {m['n_images']} images in {m['seconds']:.1f} s = {m['images_per_second']:.1f} images/s")


if __name__ == "__main__":
    main()
