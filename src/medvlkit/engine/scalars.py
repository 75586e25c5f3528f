"""TensorBoard scalars of a training run, written when the optional ``tensorboard`` package is installed
(``pip install 'medvlkit[tensorboard]'``); without it nothing is written and nothing else changes.

:func:`medvlkit.engine.training.fit` logs under ``<run folder>/tensorboard/``, on rank 0:

- per optimizer step (x: the step, 1-based): ``train/loss`` and ``train/lr`` (the first parameter group's learning
  rate for that step; ``train/lr_group<i>`` for the others);
- per epoch (x: the step the epoch ended on): every number in the epoch's history record, as ``val/<name>`` for
  the validation metrics and ``epoch/train_loss``, ``epoch/samples_per_s``, ``epoch/index``.

The numbers are the ones ``result.json``'s history and the HTML report's curves show. A resumed run purges what the
interrupted one wrote after its checkpoint, so each step appears once, as in an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FOLDER = "tensorboard"
_NOT_VALIDATION = {"epoch": "epoch/index", "step": None, "train_loss": "epoch/train_loss",
                   "samples_per_s": "epoch/samples_per_s"}


class ScalarLog:
    """Writes a run's scalars to TensorBoard event files (a no-op when disabled or ``tensorboard`` is missing).

    Args:
        out_dir: the run folder; events go to ``out_dir/tensorboard``.
        resume_step: the step a resumed run continues after (its checkpoint's); 0 for a new run.
        enabled: False on every rank but the main one.
    """

    def __init__(self, out_dir: Path, resume_step: int = 0, enabled: bool = True) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch says "TensorBoard logging requires TensorBoard": the extra is not installed
            logger.debug("tensorboard is not installed: no TensorBoard scalars (pip install 'medvlkit[tensorboard]')")
            return
        # purge_step: events the interrupted run wrote after the checkpoint are dropped by every TensorBoard reader
        self._writer = SummaryWriter(str(Path(out_dir) / FOLDER), purge_step=resume_step + 1 if resume_step else None)

    @property
    def active(self) -> bool:
        return self._writer is not None

    def step(self, step: int, loss: float, lrs: list[float]) -> None:
        """The loss of optimizer step ``step`` and the learning rates it used."""
        if self._writer is None:
            return
        self._writer.add_scalar("train/loss", loss, step)
        for i, lr in enumerate(lrs):
            self._writer.add_scalar("train/lr" if i == 0 else f"train/lr_group{i}", lr, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """An epoch's history record (:func:`medvlkit.engine.training.fit`): its numbers, at the step it ended on."""
        if self._writer is None:
            return
        for key, value in record.items():
            tag = _NOT_VALIDATION.get(key, f"val/{key}")
            if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self._writer.add_scalar(tag, value, record["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
