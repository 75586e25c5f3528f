"""The one training loop (``medvlkit/engine/training.py``) under both of its jobs: fine-tuning a tiny random CLIP and
pretraining the ``lite`` heads on a synthetic corpus. A run stopped by Ctrl-C part-way through an epoch resumes
batch for batch to the uninterrupted run's weights and history, and its TensorBoard scalars to the uninterrupted
run's scalars (each step once)."""

import json
import os
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_pretrain import _synthetic_corpus

from helpers import make_split_folders
from medvlkit.engine.checkpoint import load_checkpoint
from medvlkit.engine.scalars import ScalarLog
from medvlkit.engine.training import TrainState
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.finetune import FinetuneConfig, finetune
from medvlkit.tasks.finetune.loop import FinetuneJob
from medvlkit.tasks.pretrain import train as pretrain_mod
from medvlkit.tasks.pretrain.train import PretrainConfig, PretrainJob, pretrain


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("ftdata"), {"train": 8, "val": 8, "test": 8})


class Case:
    """How to run one job: ``run(out, resume, **changed options)``, its Job class and its trained tensors."""

    def __init__(self, kind, tmp_path, monkeypatch, tiny_clip_dir, folder):
        self.kind = kind
        if kind == "pretrain":
            corpus = _synthetic_corpus(tmp_path / "imgs")
            monkeypatch.setattr(pretrain_mod, "build_corpus", lambda root, part, sources=None: corpus)
            self.base = dict(data_root=str(tmp_path), epochs=3, batch_size=8, embed_dim=16, hidden_dim=32,
                             workers=0, feature_batch_size=8, patience=100)  # 3 batches (8, 8, 2) per epoch
            self.job, self.interrupt_at = PretrainJob, 5  # the middle of the second epoch
        else:
            self.base = dict(model=f"hf:{tiny_clip_dir}", data=str(folder), lora=kind.split(":")[1], epochs=2,
                             batch_size=4, device="cpu", workers=0, warmup=2, save_every=2)  # 4 batches per epoch
            self.job, self.interrupt_at = FinetuneJob, 6

    def run(self, out, resume=False, **changes):
        if self.kind == "pretrain":
            return pretrain(PretrainConfig(out_dir=str(out), **(self.base | changes)), resume=resume, progress=False)
        return finetune(FinetuneConfig(out_dir=str(out), **(self.base | changes)), resume=resume, progress=False)

    def trained(self, out):
        state = load_checkpoint(out / "checkpoint.pt")
        return state["heads"] if self.kind == "pretrain" else state["trainable"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["finetune:r=2,dropout=0", "finetune:r=2,dropout=0.3", "pretrain"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(kind, tiny_clip_dir, folder, tmp_path, monkeypatch):
    """SIGINT in the middle of a step: that step finishes, a checkpoint is written, and --resume continues from the
    next batch of the same epoch. With dropout, the masks after resuming must be the uninterrupted run's."""
    case = Case(kind, tmp_path, monkeypatch, tiny_clip_dir, folder)
    straight = case.run(tmp_path / "straight")
    real, calls = case.job.train_step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == case.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of this step
        return real(self, *args, **kwargs)

    broken = tmp_path / "broken"
    monkeypatch.setattr(case.job, "train_step", interrupted)
    with pytest.raises(MedvlkitError, match="--resume"):
        case.run(broken)
    state = load_checkpoint(broken / "checkpoint.pt")
    assert state["step"] == case.interrupt_at and state["batch_pos"] > 0  # saved after that step, mid-epoch
    monkeypatch.setattr(case.job, "train_step", real)
    with pytest.raises(MedvlkitError, match="exists"):
        case.run(broken)
    with pytest.raises(MedvlkitError, match="other options"):
        case.run(broken, resume=True, lr=0.5)
    resumed = case.run(broken, resume=True)

    a, b = case.trained(tmp_path / "straight"), case.trained(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def timeless(history):
        return [{k: v for k, v in h.items() if k != "samples_per_s"} for h in history]

    assert timeless(resumed["history"]) == timeless(straight["history"])
    assert [h["epoch"] for h in resumed["history"]] == list(range(case.base["epochs"]))
    assert resumed["best"] == straight["best"]

    # TensorBoard: every step once, with the uninterrupted run's losses; validation as in the history
    want, got = tensorboard_scalars(tmp_path / "straight"), tensorboard_scalars(broken)
    n_steps = straight["history"][-1]["step"]
    assert [s for s, _ in want["train/loss"]] == list(range(1, n_steps + 1))
    assert got["train/loss"] == want["train/loss"] and got["train/lr"] == want["train/lr"]
    assert [v for _, v in got["val/score"]] == pytest.approx([h["score"] for h in straight["history"]], rel=1e-6)
    assert [s for s, _ in got["val/score"]] == [h["step"] for h in straight["history"]]
    assert [v for _, v in got["epoch/train_loss"]] == pytest.approx([h["train_loss"] for h in straight["history"]],
                                                                    rel=1e-6)


def tensorboard_scalars(run) -> dict:
    """{tag: [(step, value)]} as TensorBoard reads the run's event files (purged steps dropped)."""
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_without_tensorboard_nothing_is_written_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # as if not installed
    log = ScalarLog(tmp_path, 0, True)
    log.step(1, 0.5, [1e-3])
    log.epoch({"epoch": 0, "step": 1, "score": 0.7})
    log.close()
    assert not log.active and not (tmp_path / "tensorboard").exists()
    assert not ScalarLog(tmp_path, 0, enabled=False).active  # other ranks than the main one write nothing


def test_resume_needs_a_checkpoint_and_refuses_an_old_loop_position(tmp_path):
    with pytest.raises(MedvlkitError, match="no checkpoint.pt"):
        pretrain(PretrainConfig(data_root=str(tmp_path), out_dir=str(tmp_path / "none")), resume=True)
    with pytest.raises(MedvlkitError, match="older medvlkit"):
        TrainState.from_checkpoint({"heads": {}, "epoch": 3, "history": [], "best": {}})


@pytest.mark.slow
def test_pretrain_writes_its_result_and_best_heads(tmp_path, monkeypatch, tiny_clip_dir, folder):
    case = Case("pretrain", tmp_path, monkeypatch, tiny_clip_dir, folder)
    summary = case.run(tmp_path / "run")
    assert len(summary["history"]) == 3 and (tmp_path / "run" / "best" / "lite_heads.safetensors").is_file()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["task"] == "pretrain" and result["metrics"]["score"] == summary["best"]["score"]
    assert result["headline"] and set(result["headline"]) <= set(result["metrics"])
    assert result["best_epoch"] == summary["best"]["epoch"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3
    with pytest.raises(MedvlkitError, match="batch-size"):
        PretrainConfig(data_root=".", out_dir=".", batch_size=1)
