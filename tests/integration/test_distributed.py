"""Two CPU processes under torchrun (gloo) train to the same weights as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import free_port, make_split_folders
from medvlkit.engine.checkpoint import load_checkpoint
from medvlkit.tasks.finetune import FinetuneConfig, finetune

SCRIPT = """
import json, sys
from medvlkit.engine.checkpoint import load_checkpoint
from medvlkit.tasks.finetune import FinetuneConfig, finetune
finetune(FinetuneConfig(**json.loads(sys.argv[1])), progress=False)
"""


@pytest.mark.parametrize("mode,grad_cache", [("contrastive", 2), ("supervised", 0)])
def test_two_processes_equal_one(tiny_clip_dir, tmp_path, mode, grad_cache):
    data = make_split_folders(tmp_path / "data", {"train": 6, "val": 6}, seed_step=10)
    base = dict(model=f"hf:{tiny_clip_dir}", data=str(data), mode=mode, lora="r=2,dropout=0", epochs=1,
                batch_size=6, device="cpu", workers=0, warmup=0, lr=0.1, head_lr=0.1,
                optimizer="sgd")  # SGD, not Adam: a wrongly scaled gradient must change the weights
    single = tmp_path / "single"
    finetune(FinetuneConfig(**base, out_dir=str(single)), progress=False)
    multi = tmp_path / "multi"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cfg = json.dumps(base | {"out_dir": str(multi), "grad_cache": grad_cache})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), str(script), cfg],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(single / "checkpoint.pt")
    b = load_checkpoint(multi / "checkpoint.pt")
    assert a["step"] == b["step"] == 2
    assert a["trainable"].keys() == b["trainable"].keys()
    moved = 0
    for k, v in a["trainable"].items():
        assert torch.allclose(v, b["trainable"][k], atol=1e-5), k
    if a["head"]:
        for k, v in a["head"].items():
            assert torch.allclose(v, b["head"][k], atol=1e-5), k
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["world_size"] == 2
    # the weights did move: the comparison is not between two untouched models
    for k, v in a["trainable"].items():
        moved += int("lora_B" in k and v.abs().sum() > 0)
    assert moved > 0


def test_cli_under_torchrun(tiny_clip_dir, tmp_path):
    """`torchrun -m medvlkit finetune ...`: both ranks train, rank 0 writes the run and scores the test split."""
    data = make_split_folders(tmp_path / "data", {"train": 4, "val": 4, "test": 4}, seed_step=7)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "medvlkit", "finetune", "--model",
                           f"hf:{tiny_clip_dir}", "--data", str(data), "--lora", "r=2", "--epochs", "1",
                           "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet", "--bootstrap", "0",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert json.loads((out / "result.json").read_text())["metrics"]["n"] == 8
