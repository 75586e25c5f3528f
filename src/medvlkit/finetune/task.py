"""The ``finetune`` task end to end: train (or load a trained run), then score the best model on a test split.

The CLI only parses options and prints what this returns; the same sequence serves the Python API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medvlkit.finetune.config import FinetuneConfig


@dataclass
class FinetuneOutcome:
    """What one ``finetune`` run produced.

    Attributes:
        summary: the training summary (best epoch, steps, seconds); None when ``load`` skipped training.
        best_dir: the folder of the best model (``ft:`` spec).
        result: the test split's ``result.json`` content; None when not scored.
        note: why nothing was scored when the data has no such split.
        is_main: False on torchrun ranks other than 0 (they train, rank 0 scores and reports).
    """

    summary: dict | None
    best_dir: Path
    result: dict | None = None
    note: str = ""
    is_main: bool = True


def run_finetune_task(cfg: FinetuneConfig, config: dict, test_split: str = "test", load: Path | None = None,
                      n_bootstrap: int = 1000, resume: bool = False, progress: bool = True) -> FinetuneOutcome:
    """Train ``cfg`` (unless ``load`` names a trained ``best/`` folder), then score the best model on
    ``test_split`` of ``cfg.data`` (``"none"`` skips scoring) and write ``result.json`` into ``cfg.out_dir``.

    Under torchrun, every rank trains; only rank 0 scores (the process group is shut down first).

    Args:
        config: the options as given, recorded in ``result.json``.
    """
    from medvlkit.data import load_dataset
    from medvlkit.distributed import init_world, shutdown
    from medvlkit.errors import NoSplitsError
    from medvlkit.finetune.evaluation import evaluate_finetuned
    from medvlkit.finetune.loop import finetune
    from medvlkit.models import create_model

    out_dir = Path(cfg.out_dir)
    summary = None
    if load is None:
        summary = finetune(cfg, resume=resume, progress=progress)
        is_main = init_world(cfg.device).is_main
        shutdown()  # the test split is scored on rank 0 alone
        if not is_main:
            return FinetuneOutcome(summary, out_dir / "best", is_main=False)
        load = out_dir / "best"
    outcome = FinetuneOutcome(summary, Path(load))
    if test_split.lower() == "none":
        return outcome
    try:
        test_ds = load_dataset(cfg.data, split=test_split, format=cfg.format, **cfg.dataset_options)
    except NoSplitsError:
        outcome.note = (f"{cfg.data} has no '{test_split}' split: nothing scored (score the model on test data with "
                        f"`medvlkit finetune --load {load} --data TEST --test-split ''`)")
        return outcome
    model = create_model(f"ft:{load}", device=cfg.device)
    outcome.result = evaluate_finetuned(model, test_ds, out_dir, config, n_bootstrap, cfg.seed, batch_size=64,
                                        num_workers=cfg.workers, progress=progress)
    return outcome
