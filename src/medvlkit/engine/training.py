"""The one training loop: epochs of optimizer steps around a :class:`TrainState`, validation at each epoch end,
the best epoch kept, early stopping, and one checkpoint/resume implementation.

A task plugs in as a :class:`Job` (``finetune/loop.py``: contrastive or supervised fine-tuning of a model, on one
process or under torchrun; ``pretrain/train.py``: the ``lite`` heads on frozen-tower features). The job says what
an epoch's batches are, how one batch's loss is computed and back-propagated, how to validate and how to save the
best model; the loop owns everything else.

``checkpoint.pt`` (written atomically every ``save_every`` steps, at each epoch end and on Ctrl-C/SIGTERM) holds
the job's trainable tensors, the optimizer, scheduler and AMP scaler, the torch RNG states, the position (epoch,
batch within it, step) and the history. A job's batch plan is a pure function of its seed and the epoch, so a
resumed run re-draws the interrupted epoch's plan, skips the batches already done and continues batch for batch:
the resumed run's weights equal the uninterrupted run's (``tests/unit/test_training_loop.py``).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from medvlkit.engine.checkpoint import load_checkpoint, save_checkpoint
from medvlkit.engine.distributed import World, gather_objects
from medvlkit.engine.interrupt import StopRequest
from medvlkit.engine.scalars import ScalarLog
from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class LoopOptions:
    """How long to train and how often to save.

    Attributes:
        epochs: maximum epochs; ``patience`` epochs without a better validation score stop the run early.
        max_steps: a step budget (0: none); reaching it ends the epoch in flight (validated like any other).
        save_every: optimizer steps between checkpoints (0: epoch ends and interruptions only).
        scheduler_interval: ``step`` (the scheduler advances after every optimizer step) or ``epoch``.
        total_steps: the progress bar's length (None: unknown).
        desc: the progress bar's label.
        divergence_hint: what to change when the loss becomes NaN/inf (named in the error).
    """

    epochs: int
    patience: int
    max_steps: int = 0
    save_every: int = 0
    scheduler_interval: str = "step"
    total_steps: int | None = None
    desc: str = "train"
    divergence_hint: str = "lower the learning rate"

    def __post_init__(self) -> None:
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', not {self.scheduler_interval!r}")


@dataclass
class TrainState:
    """Where a run is: what a checkpoint restores besides tensors.

    Attributes:
        step: optimizer steps taken; ``epoch``: the epoch in flight; ``batch_pos``: batches of it already done.
        loss_sum, loss_n: the training loss summed over the epoch's finished steps (so an epoch interrupted and
            resumed reports the same mean loss as an uninterrupted one).
        history: one record per finished epoch (``epoch``, ``step``, ``train_loss``, validation metrics,
            ``samples_per_s``); ``best``: the best record so far (``score`` is what "best" means).
    """

    step: int = 0
    epoch: int = 0
    batch_pos: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": -1, "step": 0})

    def to_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                "epoch_loss": [self.loss_sum, self.loss_n], "history": self.history, "best": self.best}

    @classmethod
    def from_checkpoint(cls, state: dict) -> TrainState:
        if "step" not in state or "batch_pos" not in state:
            raise MedvlkitError("the checkpoint was written by an older medvlkit whose loop kept no step position; "
                                "start the run again in a new --out folder")
        loss_sum, loss_n = state.get("epoch_loss", [0.0, 0])
        return cls(state["step"], state["epoch"], state["batch_pos"], float(loss_sum), int(loss_n),
                   list(state["history"]), dict(state["best"]))


Batch = TypeVar("Batch", bound=Sized)  # what a job plans per step: item indices, (index, caption) pairs ...


class Job(ABC, Generic[Batch]):
    """A task the loop can train. Set ``optimizer`` and ``scheduler`` (and ``scaler`` for fp16 autocast, ``world``
    under torchrun, ``device`` on CUDA) before calling :func:`fit`."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    world: World = World()
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def epoch_batches(self, epoch: int) -> list[Batch]:
        """The epoch's batch plan: a pure function of the job's seed and ``epoch`` (a resumed run draws it again).
        ``len()`` of a planned batch is its number of samples."""

    @abstractmethod
    def load_batches(self, plan: list[Batch], epoch: int) -> Iterable:
        """One loaded batch per planned batch, in order (``plan`` starts where a resumed run continues)."""

    @abstractmethod
    def train_step(self, planned: Batch, batch, epoch: int) -> float:
        """Forward and backward of one batch (gradients accumulated, not applied); returns the loss."""

    def reduce_gradients(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Combine gradients across ranks before the optimizer step (nothing on one process)."""

    def train_mode(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Put the trained modules in training mode (called at each epoch's start)."""

    @abstractmethod
    def validate(self, epoch: int) -> dict:
        """Validation metrics (``score``: higher is better), the same on every rank."""

    @abstractmethod
    def save_best(self, record: dict) -> None:
        """Write the model of a new best epoch (``record``: its history entry). Called on rank 0 only."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The job's tensors to checkpoint (trainable weights), as plain data; keys other than the loop's."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` wrote (``state`` is the whole checkpoint)."""


def open_run(out_dir: Path, resume: bool, config: dict) -> dict | None:
    """Check a run folder against ``resume`` before any work: the checkpoint when resuming, else None.

    Raises:
        MedvlkitError: a checkpoint exists but ``resume`` is off; ``resume`` without a checkpoint; a checkpoint that
            is not plain data (it could run code); a checkpoint written with other options than ``config``.
    """
    path = Path(out_dir) / CHECKPOINT
    if path.exists() and not resume:
        raise MedvlkitError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    if not resume:
        return None
    if not path.exists():
        raise MedvlkitError(f"--resume: no {CHECKPOINT} in {out_dir}")
    state = load_checkpoint(path)
    # options added to medvlkit after the checkpoint was written are not compared
    diff = {k: (v, config[k]) for k, v in state.get("config", {}).items() if k in config and config[k] != v}
    if diff:
        raise MedvlkitError(f"--resume with other options than the checkpoint's: {diff} (checkpoint, now)")
    return state


def _restore(job: Job[Any], checkpoint: dict, out_dir: Path) -> TrainState:
    """Put ``job`` (weights, optimizer, scheduler, scaler, RNGs) back where ``checkpoint`` left it."""
    ts = TrainState.from_checkpoint(checkpoint)
    job.load_state_dict(checkpoint)
    job.optimizer.load_state_dict(checkpoint["optimizer"])
    job.scheduler.load_state_dict(checkpoint["scheduler"])
    if job.scaler is not None and checkpoint.get("scaler"):
        job.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint.get("cuda_rng") is not None and job.device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], job.device)
    if job.world.is_main:
        logger.info("resuming %s at step %d (epoch %d, batch %d)", out_dir, ts.step, ts.epoch, ts.batch_pos)
    return ts


def _save_state(path: Path, job: Job, ts: TrainState, config: dict) -> None:
    """Everything :func:`_restore` needs, with the run's options (compared on ``--resume``)."""
    save_checkpoint(path, {
        **job.state_dict(), **ts.to_dict(), "config": config,
        "optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(),
        "scaler": job.scaler.state_dict() if job.scaler else None, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(job.device) if job.device.type == "cuda" else None})


def _one_step(job: Job[Any], opts: LoopOptions, ts: TrainState, planned, batch) -> float:
    """One optimisation step on ``batch``; moves ``ts`` one step on. Returns the loss.

    Raises:
        MedvlkitError: the loss is NaN or infinite (the run has diverged).
    """
    loss = job.train_step(planned, batch, ts.epoch)
    if not math.isfinite(loss):
        raise MedvlkitError(f"the training loss is {loss} at step {ts.step + 1}: the run has diverged "
                            f"({opts.divergence_hint}); the best model saved so far is kept")
    _optimizer_step(job, opts)
    ts.step, ts.batch_pos = ts.step + 1, ts.batch_pos + 1
    ts.loss_sum, ts.loss_n = ts.loss_sum + loss, ts.loss_n + 1
    return loss


def fit(job: Job[Any], opts: LoopOptions, out_dir: Path, config: dict, checkpoint: dict | None = None,
        progress: bool = True) -> TrainState:
    """Train ``job`` until ``opts.epochs`` (or the step budget, or early stopping); returns the final state.

    Args:
        out_dir: where ``checkpoint.pt`` goes (rank 0 writes it).
        config: the run's options, stored in the checkpoint and compared by :func:`open_run` on resume.
        checkpoint: the state :func:`open_run` returned, to continue from.

    Raises:
        MedvlkitError: the loss became NaN/inf, or the run was interrupted (after saving a checkpoint to resume).
    """
    ts = TrainState() if checkpoint is None else _restore(job, checkpoint, out_dir)
    ckpt_path, world = Path(out_dir) / CHECKPOINT, job.world
    saved = {"step": ts.step}

    def save() -> None:
        saved["step"] = ts.step
        if world.is_main:
            _save_state(ckpt_path, job, ts, config)

    bar = tqdm(total=opts.total_steps, initial=ts.step, desc=opts.desc, unit="step",
               disable=not (progress and world.is_main))
    scalars = ScalarLog(out_dir, ts.step if checkpoint is not None else 0, world.is_main)
    budget_spent = bool(opts.max_steps) and ts.step >= opts.max_steps
    t_start, seen, in_step = time.perf_counter(), 0, False  # in_step: a step changed RNG/weights, not the position
    try:
        with StopRequest() as stop_request:
            while not budget_spent and ts.epoch < opts.epochs:
                plan = job.epoch_batches(ts.epoch)[ts.batch_pos:]
                job.train_mode()
                for planned, batch in zip(plan, job.load_batches(plan, ts.epoch)):
                    in_step, lrs = True, [g["lr"] for g in job.optimizer.param_groups]
                    loss = _one_step(job, opts, ts, planned, batch)
                    scalars.step(ts.step, loss, lrs)
                    in_step, seen = False, seen + len(planned)
                    bar.update(1)
                    bar.set_postfix(epoch=ts.epoch, loss=f"{loss:.4f}",
                                    samples_s=f"{seen / max(time.perf_counter() - t_start, 1e-9):.1f}")
                    if opts.save_every and ts.step % opts.save_every == 0:
                        save()
                    if any(gather_objects(stop_request.requested, world)):
                        raise KeyboardInterrupt  # between steps: the handler below writes the checkpoint
                    if opts.max_steps and ts.step >= opts.max_steps:
                        budget_spent = True
                        break
                scalars.epoch(_end_epoch(job, opts, ts, seen / max(time.perf_counter() - t_start, 1e-9)))
                save()
                if ts.epoch - 1 - ts.best["epoch"] >= opts.patience:
                    logger.info("early stop after epoch %d (best %d)", ts.epoch - 1, ts.best["epoch"])
                    break
    except KeyboardInterrupt:
        if not in_step:  # between steps the state is consistent: save it (a forced stop mid-step keeps the last)
            save()
        raise MedvlkitError(f"interrupted at step {ts.step}; the checkpoint at step {saved['step']} is saved: "
                            "continue with the same command and --resume") from None
    finally:
        bar.close()
        scalars.close()
    return ts


def _optimizer_step(job: Job[Any], opts: LoopOptions) -> None:
    job.reduce_gradients()
    if job.scaler is not None:
        job.scaler.step(job.optimizer)
        job.scaler.update()
    else:
        job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    if opts.scheduler_interval == "step":
        job.scheduler.step()


def _end_epoch(job: Job[Any], opts: LoopOptions, ts: TrainState, samples_per_s: float) -> dict[str, Any]:
    """Validate, record the epoch, keep the best model, and move the position to the next epoch. The state changes
    come last and together, so an interruption during validation leaves the epoch to be validated on resume.
    Returns the epoch's history record."""
    score = job.validate(ts.epoch)
    if not math.isfinite(score["score"]):
        raise MedvlkitError(f"the validation score of epoch {ts.epoch} is {score['score']}: nothing can be chosen by "
                            "it (a validation split the score is undefined on?); "
                            + ("no best model was saved" if ts.best["epoch"] < 0 else
                               f"the best model so far (epoch {ts.best['epoch']}) is kept"))
    record = {"epoch": ts.epoch, "step": ts.step, "train_loss": ts.loss_sum / ts.loss_n if ts.loss_n else None,
              **score, "samples_per_s": samples_per_s}
    best = ts.best
    if score["score"] > best["score"]:
        best = {"score": score["score"], "epoch": ts.epoch, "step": ts.step, **score}
        if job.world.is_main:
            job.save_best(best)
    if opts.scheduler_interval == "epoch":
        job.scheduler.step()
    ts.history.append(record)
    ts.best, ts.epoch, ts.batch_pos, ts.loss_sum, ts.loss_n = best, ts.epoch + 1, 0, 0.0, 0
    return record
