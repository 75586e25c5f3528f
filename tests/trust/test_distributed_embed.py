"""Issue 25, items 5 (sharded embed dropping images with node-local caches) and 13 (torchrun embed on several GPUs
putting every rank on cuda:0). Each test failed on the main of 2026-12-06."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port, make_image_folder

RANK_CACHE = """
import os, sys
# a node-local cache: every rank its own folder, as on separate machines
os.environ["MEDVLKIT_CACHE"] = os.path.join(sys.argv[1], "node" + os.environ["RANK"])
from medvlkit.apps.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_item05_node_local_caches_lose_nothing(tiny_clip_dir, tmp_path):
    """Rank 0 re-read only its own node's cache: 6 of 12 images written, 0 skipped, exit 0."""
    data = make_image_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    script = tmp_path / "rank_cache.py"
    script.write_text(RANK_CACHE)
    common = ["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--device", "cpu", "--workers", "0",
              "--batch-size", "4", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))

    def torchrun(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(free_port()), str(script), str(tmp_path / "caches"), *common,
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)

    for run in ("first", "second"):  # the second run: each node's cache holds only the half its rank embedded
        proc = torchrun(tmp_path / run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((tmp_path / run / "result.json").read_text())
        with open(tmp_path / run / "files.csv", newline="") as f:
            files = [r["file"] for r in csv.DictReader(f)]
        assert res["metrics"]["n_images"] == 12 and len(files) == 12 and res["n_skipped"] == 0, run
    assert res["metrics"]["n_cached"] >= 6  # rank 0's own half came from its cache, rank 1's over the group


def test_item05_an_incomplete_merge_is_an_error(tiny_clip_dir, tmp_path):
    from medvlkit import MedvlkitError, load_dataset
    from medvlkit.engine.features import _result

    data = make_image_folder(tmp_path / "imgs", {"a": 3})
    ds = load_dataset(data)
    with pytest.raises(MedvlkitError, match="not the dataset's 3"):
        _result(ds, {0: [0.0], 1: [0.0]}, [], 0)


def test_item13_each_rank_makes_its_own_gpu_current(monkeypatch):
    import torch

    from medvlkit.engine import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    world = distributed.init_world("cuda")
    assert world.rank == 1 and calls == [("set_device", "cuda:1"), ("init", "nccl")]  # before NCCL starts
    calls.clear()
    distributed.init_world("cuda:3")
    assert calls[0] == ("set_device", "cuda:3")
    calls.clear()
    distributed.init_world("cpu")
    assert calls == [("init", "gloo")]
