"""`torchrun -m medvlkit embed` on two CPU processes (gloo): each rank embeds its share, rank 0 writes the merged
result in dataset order, equal to one process's, with the cache as the exchange and without it."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port, make_image_folder
from medvlkit.apps.cli import main


def _files(out):
    with open(out / "files.csv", newline="") as f:
        return [r["file"] for r in csv.DictReader(f)]


@pytest.mark.parametrize("cache", [True, False])
def test_two_ranks_embed_what_one_process_embeds(tiny_clip_dir, tmp_path, cache):
    data = make_image_folder(tmp_path / "imgs", {"a": 5, "b": 6})
    (data / "b" / "broken.png").write_bytes(b"not an image")  # skipped once, whichever rank reads it
    common = ["--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--device", "cpu", "--workers", "0",
              "--batch-size", "3", "--on-error", "skip", "-q"]
    cache_args = ["--cache-dir", str(tmp_path / "cache")] if cache else ["--no-cache"]
    single = tmp_path / "single"
    assert main(["embed", *common, "--no-cache", "--out", str(single)]) == 0
    multi = tmp_path / "multi"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "-m", "medvlkit", "embed", *common, *cache_args, "--out", str(multi)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(multi) == _files(single) and len(_files(single)) == 11
    np.testing.assert_allclose(np.load(multi / "embeddings.npy"), np.load(single / "embeddings.npy"), atol=1e-6)
    res = json.loads((multi / "result.json").read_text())
    assert res["world_size"] == 2 and res["n_skipped"] == 1 and res["skipped"][0]["file"].endswith("broken.png")
    if cache:  # each rank wrote its own shards; a rerun on one process takes every vector from the cache
        again = tmp_path / "again"
        assert main(["embed", *common, *cache_args, "--out", str(again)]) == 0
        assert json.loads((again / "result.json").read_text())["metrics"]["n_cached"] == 11
        assert len(list((tmp_path / "cache").rglob("shard-*.npz"))) >= 2
