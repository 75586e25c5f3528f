"""The ``finetune`` task end to end: train (or load a trained run), then score the best model on a test split.

The CLI only parses options and prints what this returns; the same sequence serves the Python API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medvlkit.errors import MedvlkitError
from medvlkit.tasks.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


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
    from medvlkit.engine.distributed import init_world, shutdown
    from medvlkit.engine.options import DataOptions
    from medvlkit.models import create_model
    from medvlkit.tasks.finetune.evaluation import evaluate_finetuned
    from medvlkit.tasks.finetune.loop import _refuse_inference_only, finetune

    out_dir = Path(cfg.out_dir)
    summary = None
    if load is None and cfg.model.startswith("onnx:"):  # the cheapest refusal first
        _refuse_inference_only(cfg.model)
    test_ds = _test_split(cfg, test_split, load)
    if load is None:
        summary = finetune(cfg, resume=resume, progress=progress)
        is_main = init_world(cfg.device).is_main
        shutdown()  # the test split is scored on rank 0 alone
        if not is_main:
            return FinetuneOutcome(summary, out_dir / "best", is_main=False)
        load = out_dir / "best"
    outcome = FinetuneOutcome(summary, Path(load))
    if test_ds is None:
        if test_split.lower() != "none":
            outcome.note = (f"{cfg.data} has no '{test_split}' split: nothing scored (score the model on test data "
                            f"with `medvlkit finetune --load {load} --data TEST --test-split ''`)")
        return outcome
    model = create_model(f"ft:{load}", device=cfg.device)
    test_ds = DataOptions(format=cfg.format, **cfg.dataset_options).held_out(test_ds, model, "test",
                                                                            num_workers=cfg.workers, progress=progress)
    prompts, trained = None, _run_config(Path(load)) or cfg
    if trained.mode == "prompt_ce":  # scored with the prompt set it was trained over
        from medvlkit.tasks.finetune.loop import training_prompts

        prompts = training_prompts(trained, test_ds)
    outcome.result = evaluate_finetuned(model, test_ds, out_dir, config, n_bootstrap, cfg.seed, batch_size=64,
                                        num_workers=cfg.workers, progress=progress, prompts=prompts)
    return outcome


def _test_split(cfg: FinetuneConfig, test_split: str, load: Path | None):
    """The test split to score (None: ``none``, or the data has no such split), checked before any training: none
    of its images may have trained the model or chosen its best epoch (the run's own config when ``load`` names a
    trained ``best/`` folder with its run's ``config.json`` beside it).

    Raises:
        MedvlkitError: the test split shares images with the training or validation data.
    """

    from medvlkit.data.splits import check_scored_apart
    from medvlkit.engine.options import DataOptions
    from medvlkit.errors import NoSplitsError
    from medvlkit.tasks.finetune.loop import split_train_val

    if test_split.lower() == "none":
        return None
    try:
        test_ds = DataOptions(format=cfg.format, **cfg.dataset_options).load(cfg.data, test_split)
    except NoSplitsError:
        return None
    trained: FinetuneConfig | None = cfg if load is None else _run_config(Path(load))
    if trained is not None and load is not None:
        try:
            train, val = split_train_val(trained)
        except MedvlkitError as err:
            logger.warning("cannot re-read the data %s trained on (%s); not checked against the test split", load, err)
            return test_ds
        check_scored_apart(test_ds.items, {"trained the model": train.items,
                                           "chose its best epoch": val.items if val is not None else []})
    elif trained is not None:
        train, val = split_train_val(trained)
        check_scored_apart(test_ds.items, {"trained the model": train.items,
                                           "chose its best epoch": val.items if val is not None else []})
    return test_ds


def _run_config(best_dir: Path) -> FinetuneConfig | None:
    """The options of the run whose ``best/`` folder this is (its ``config.json`` beside it), or None (a folder from
    elsewhere: what it trained on is not known here)."""
    import json

    run_config = best_dir.parent / "config.json"
    try:
        return FinetuneConfig(**json.loads(run_config.read_text())) if run_config.is_file() else None
    except (OSError, ValueError, TypeError):
        return None
