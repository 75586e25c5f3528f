"""The ``adapt`` task: few-shot adaptation of a frozen model with K labelled images per class
(:mod:`medvlkit.engine.fewshot`'s methods), scored on the test split like the probe and saved as ``adapter.npz``.

The K shots are a seeded sample of the training split (:func:`medvlkit.data.splits.few_shot_indices`, the probe's
``--shots``); the prompt set's classes are matched to the training data's class names as zero-shot matches them
(:func:`medvlkit.tasks.zeroshot.prompts_used`), so the adapter starts from exactly the zero-shot classifier
``zeroshot`` would use. Hyper-parameters come from the shots alone; the test split chooses nothing, and an image
that fitted the adapter is never scored (the probe's rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.data.splits import few_shot_indices, load_train
from medvlkit.engine.fewshot import METHODS, FewShotAdapter, fit_fewshot
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.probe import check_probe_model, embed_split, save_probe_run


@dataclass
class AdaptConfig:
    """Options of one ``adapt`` run (see ``medvlkit adapt --help``).

    Attributes:
        model, data: what to embed; ``prompts``: the prompt set whose class embeddings the methods start from
            (None: generic prompts of the data's class names).
        method: one of :data:`medvlkit.engine.fewshot.METHODS`; shots: K labelled images per class; seed: the
            sample of shots, the validation part of them and the training order.
        train_split, test_split: where the shots come from and what is scored.
        load: an ``adapter.npz`` to score instead of fitting one.
    """

    model: str = "lite"
    data: str = ""
    prompts: str | None = None
    method: str = "tip_adapter"
    shots: int = 16
    seed: int = 0
    train_split: str = "train"
    test_split: str = "test"
    load: str | None = None


def run_adapt_task(cfg: AdaptConfig, out_dir: Path, config: dict[str, Any], n_bootstrap: int = 1000,
                   run: RunOptions | None = None, data: DataOptions | None = None,
                   model: Any = None) -> tuple[dict[str, Any], FewShotAdapter]:
    """Fit (or load) a few-shot adapter, score it on the test split, write result.json, predictions.csv and
    adapter.npz into ``out_dir``. Returns the result dict and the adapter.

    Raises:
        MedvlkitError: an unknown method, fewer than ``shots`` training images of a class, multi-label data, a model
            without a text tower, a loaded adapter of another model, a test image among the shots.
    """
    from medvlkit.data.prompts import resolve_prompt_set
    from medvlkit.engine.answer import class_vectors
    from medvlkit.engine.identity import dataset_identity, identity_record, model_identity, result_options
    from medvlkit.models.base import file_sha256
    from medvlkit.tasks.zeroshot import prompts_used

    run, data = run or RunOptions(), data or DataOptions()
    embed_options = run.embed_kwargs()
    if cfg.method not in METHODS:
        raise MedvlkitError(f"--method {cfg.method}: valid options: {', '.join(METHODS)}")
    if cfg.shots < 1:
        raise MedvlkitError(f"--shots {cfg.shots}: must be at least 1")
    model = model if model is not None else run.load_model(cfg.model)
    model.require_text("few-shot adaptation (its methods start from the prompt set's class embeddings)")
    test_ds = data.held_out(data.load(cfg.data, cfg.test_split or None), model, "test", **embed_options)
    train_ds = None if cfg.load else load_train(cfg.data, data, cfg.train_split)
    for ds in (train_ds, test_ds):
        if ds is not None and (not ds.has_labels or ds.multilabel):
            raise MedvlkitError(f"{ds.full_name}: few-shot adaptation needs single-label data (one class per image)")
    identity = identity_record("fewshot_adapt", model=model_identity(model),
                               settings={k: v for k, v in asdict(cfg).items() if k not in ("model", "data")},
                               train=dataset_identity(train_ds) if train_ds is not None else None,
                               test=dataset_identity(test_ds),
                               loaded=file_sha256(cfg.load) if cfg.load and Path(cfg.load).is_file() else None,
                               bootstrap=n_bootstrap, options=result_options(embed_options))
    if cfg.load:
        adapter, header = FewShotAdapter.load(Path(cfg.load))
        check_probe_model(header, model)
        info: dict[str, Any] = {"loaded": cfg.load, "method": adapter.method, "hyper": adapter.hyper}
    else:
        assert train_ds is not None
        generic = None if cfg.prompts else ",".join(train_ds.classnames)  # "a photo of a {class}"-style prompts
        ps = prompts_used(train_ds, resolve_prompt_set(cfg.prompts, generic, "softmax"), "softmax")
        text = class_vectors(model, ps, "softmax", cache=run.cache, cache_dir=run.cache_dir).positive
        train = embed_split(model, train_ds, **embed_options)
        keep = few_shot_indices(train.Y, cfg.shots, cfg.seed)
        y = np.argmax(train.Y[keep], axis=1)
        adapter = fit_fewshot(cfg.method, train.X[keep], y, train_ds.classnames, text, model.logit_scale, cfg.seed,
                              prompt_model=model, class_texts=[c.positive[0] for c in ps.classes])
        adapter.seen_items_ = {"fitted the adapter or chose its hyper-parameters": [train.items[i] for i in keep]}
        info = {"method": cfg.method, "shots": cfg.shots, "n_shots": int(len(keep)), "seed": cfg.seed,
                "prompt_set": ps.name, "hyper": adapter.hyper}
    result = save_probe_run(adapter, embed_split(model, test_ds, **embed_options), model, test_ds,  # type: ignore[arg-type]
                            out_dir, config, info, n_bootstrap, cfg.seed, identity, task="fewshot_adapt",
                            file_name="adapter.npz")
    return result, adapter
