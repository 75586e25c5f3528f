"""The ``adapt`` task: few-shot adaptation of a frozen model with K labelled images per class
(:mod:`medvlkit.engine.fewshot`'s methods), scored on the test split like the probe and saved as ``adapter.npz``;
and its grid (methods x shots x seeds on one dataset), whose every cell is that same run.

The K shots are a seeded sample of the training split (:func:`medvlkit.data.splits.few_shot_indices`, the probe's
``--shots``); the prompt set's classes are matched to the training data's class names as zero-shot matches them
(:func:`medvlkit.tasks.zeroshot.prompts_used`), so the adapter starts from exactly the zero-shot classifier
``zeroshot`` would use. Hyper-parameters come from the shots alone; the test split chooses nothing, and an image
that fitted the adapter is never scored (the probe's rule). The data are read, checked and embedded once
(:func:`prepare_adapt`); each (method, shots, seed) is then one :func:`adapt_cell`.

``clip_lora`` (CLIP-LoRA, Zanella & Ben Ayed, CVPRW 2024) is the one method that trains the towers: it is
``medvlkit finetune --mode prompt_ce --lora ... --shots K --val-split none`` with the paper's recipe
(:data:`CLIP_LORA_RECIPE`), run inside the cell's folder, then the tuned model's zero-shot classifier is the
adapter. It is asked by name: ``--method all`` means the methods on frozen embeddings, which a CPU runs in seconds.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.data.splits import few_shot_indices, load_train
from medvlkit.engine.fewshot import METHODS, FewShotAdapter, fit_fewshot
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.probe import ProbeData, align_probe_data, check_probe_model, embed_split, save_probe_run

CLIP_LORA = "clip_lora"
ADAPT_METHODS = (*METHODS, CLIP_LORA)
CLIP_LORA_RECIPE = {"r": 2, "alpha": 1.0, "dropout": 0.25, "lr": 2e-4, "weight_decay": 0.01, "batch_size": 32,
                    "steps_per_shot": 500}
"""CLIP-LoRA's few-shot recipe (its paper and code): rank 2, alpha 1, dropout 0.25 on the query, key and value
projections of both towers (where a tower has none, e.g. lite's CNN image tower, the model's default LoRA targets),
AdamW lr 2e-4, weight decay 0.01, cosine schedule, batches of 32, 500 x K steps, no validation, the last model kept.
Unlike the paper, no augmented views (medvlkit's fine-tuning reads each image as evaluation does)."""
ATTENTION_TARGETS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


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
        steps: ``clip_lora``'s training steps (0: the paper's 500 x shots).
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
    steps: int = 0


@dataclass
class Prepared:
    """What every cell of an ``adapt`` run or grid shares: the model, the data read and embedded once, the prompt set
    matched to the training data's classes and its class vectors, and the embedding options."""

    model: Any
    test_ds: Any
    test: ProbeData
    train_ds: Any = None
    train: ProbeData | None = None
    vectors: Any = None
    embed_options: dict[str, Any] | None = None
    run: RunOptions | None = None
    data: DataOptions | None = None


def prepare_adapt(cfg: AdaptConfig, run: RunOptions, data: DataOptions, model: Any = None,
                  prompt_set: Any = None) -> Prepared:
    """Load the model, read the test split (without the model's training images) and, unless ``cfg.load``, the
    training split; embed both (cached); encode the prompt set's classes: ``prompt_set`` when given (``eval``
    passes the set its zero-shot cells use), else ``cfg.prompts``, else generic prompts of the class names.

    Raises:
        MedvlkitError: a model without a text tower, multi-label data, a dataset class the prompt set lacks.
    """
    from medvlkit.data.prompts import load_prompt_set, prompt_set_from_classes
    from medvlkit.engine.answer import class_vectors
    from medvlkit.tasks.zeroshot import prompts_used

    embed_options = run.embed_kwargs()
    model = model if model is not None else run.load_model(cfg.model)
    model.require_text("few-shot adaptation (its methods start from the prompt set's class embeddings)")
    test_ds = data.held_out(data.load(cfg.data, cfg.test_split or None), model, "test", **embed_options)
    train_ds = None if cfg.load else load_train(cfg.data, data, cfg.train_split)
    for ds in (train_ds, test_ds):
        if ds is not None and (not ds.has_labels or ds.multilabel):
            raise MedvlkitError(f"{ds.full_name}: few-shot adaptation needs single-label data (one class per image)")
    p = Prepared(model, test_ds, embed_split(model, test_ds, **embed_options), embed_options=embed_options, run=run,
                 data=data)
    if train_ds is not None:
        chosen = prompt_set or (load_prompt_set(cfg.prompts) if cfg.prompts else
                                prompt_set_from_classes(train_ds.classnames, "softmax"))  # names may hold commas
        ps = prompts_used(train_ds, chosen, "softmax")
        p.vectors = class_vectors(model, ps, "softmax", cache=run.cache, cache_dir=run.cache_dir)
        p.train_ds, p.train = train_ds, embed_split(model, train_ds, **embed_options)
    return p


def adapt_identity(cfg: AdaptConfig, p: Prepared, n_bootstrap: int) -> dict[str, Any]:
    """What one cell's result is computed from (see :mod:`medvlkit.engine.identity`)."""
    from medvlkit.engine.identity import dataset_identity, identity_record, model_identity, result_options
    from medvlkit.models.base import file_sha256

    return identity_record("fewshot_adapt", model=model_identity(p.model),
                           settings={k: v for k, v in asdict(cfg).items() if k not in ("model", "data")
                                     and (k != "steps" or cfg.method == CLIP_LORA)},  # steps: clip_lora's only
                           prompts=p.vectors.prompts.identity("softmax") if p.vectors is not None else None,
                           train=dataset_identity(p.train_ds) if p.train_ds is not None else None,
                           test=dataset_identity(p.test_ds),
                           loaded=file_sha256(cfg.load) if cfg.load and Path(cfg.load).is_file() else None,
                           bootstrap=n_bootstrap, options=result_options(p.embed_options or {}))


def adapt_cell(cfg: AdaptConfig, p: Prepared, out_dir: Path, config: dict[str, Any],
               n_bootstrap: int = 1000) -> tuple[dict[str, Any], FewShotAdapter]:
    """Fit ``cfg.method`` on ``cfg.shots`` seeded shots of the prepared training data (or load ``cfg.load``), score
    it on the test split and write result.json, predictions.csv and adapter.npz into ``out_dir``.

    Raises:
        MedvlkitError: an unknown method, fewer than ``shots`` training images of a class, a loaded adapter of
            another model, a test image among the shots.
    """
    check_method(cfg.method)
    if cfg.shots < 1:
        raise MedvlkitError(f"--shots {cfg.shots}: must be at least 1")
    model, test = p.model, p.test
    if cfg.load:
        adapter, header = FewShotAdapter.load(Path(cfg.load))
        check_probe_model(header, model)
        info: dict[str, Any] = {"loaded": cfg.load, "method": adapter.method, "hyper": adapter.hyper}
    else:
        assert p.train is not None and p.vectors is not None and p.train_ds is not None
        keep = few_shot_indices(p.train.Y, cfg.shots, cfg.seed)
        y = np.argmax(p.train.Y[keep], axis=1)
        start = time.perf_counter()
        if cfg.method == CLIP_LORA:
            adapter, model, test = fit_clip_lora(cfg, p, out_dir / CLIP_LORA, [p.train.items[i] for i in keep])
        else:
            adapter = fit_fewshot(cfg.method, p.train.X[keep], y, p.train_ds.classnames, p.vectors.positive,
                                  p.model.logit_scale, cfg.seed, prompt_model=p.model,
                                  class_texts=[c.positive[0] for c in p.vectors.prompts.classes])
        adapter.seen_items_ = {"fitted the adapter or chose its hyper-parameters": [p.train.items[i] for i in keep]}
        info = {"method": cfg.method, "shots": cfg.shots, "n_shots": int(len(keep)), "seed": cfg.seed,
                "prompt_set": p.vectors.prompts.name, "hyper": adapter.hyper,
                "fit_seconds": round(time.perf_counter() - start, 3)}
    result = save_probe_run(adapter, test, model, p.test_ds, out_dir, config, info, n_bootstrap, cfg.seed,
                            adapt_identity(cfg, p, n_bootstrap), task="fewshot_adapt", file_name="adapter.npz")
    return result, adapter


def run_adapt_task(cfg: AdaptConfig, out_dir: Path, config: dict[str, Any], n_bootstrap: int = 1000,
                   run: RunOptions | None = None, data: DataOptions | None = None,
                   model: Any = None) -> tuple[dict[str, Any], FewShotAdapter]:
    """One ``adapt`` run: :func:`prepare_adapt` then :func:`adapt_cell`. Returns the result dict and the adapter."""
    check_method(cfg.method)  # before any image is read
    run, data = run or RunOptions(), data or DataOptions()
    return adapt_cell(cfg, prepare_adapt(cfg, run, data, model), out_dir, config, n_bootstrap)


def check_method(method: str) -> None:
    """Refuse a method ``adapt`` does not know, naming those it does.

    Raises:
        MedvlkitError: an unknown method.
    """
    if method not in ADAPT_METHODS:
        raise MedvlkitError(f"--method {method}: valid options: {', '.join(ADAPT_METHODS)} (or all: "
                            f"{', '.join(METHODS)})")


def clip_lora_targets(model: Any) -> tuple[str, ...]:
    """The query, key and value projections of both towers (CLIP-LoRA's choice), by the names this model gives them;
    the model's default LoRA targets where a tower has no attention layer named so (lite's CNN image tower)."""
    towers = model.tower_modules()
    for names in ATTENTION_TARGETS:
        if all(any(n.endswith(names) for m in towers[t] for n, _ in m.named_modules()) for t in ("vision", "text")):
            return names
    return tuple(model.default_lora_targets)


def fit_clip_lora(cfg: AdaptConfig, p: Prepared, folder: Path, shots: list[str]) -> tuple[FewShotAdapter, Any,
                                                                                           ProbeData]:
    """CLIP-LoRA on ``cfg.shots`` seeded shots: ``finetune`` (mode ``prompt_ce``, :data:`CLIP_LORA_RECIPE`, no
    validation) into ``folder`` (an interrupted run resumes from its checkpoint; a finished one of the same options
    is kept), then the tuned model's class embeddings of the same prompt set as the adapter's weights. Returns the
    adapter, the tuned model and its embeddings of the test split (what the adapter scores).

    Raises:
        MedvlkitError: the images ``finetune`` draws as its shots are not ``shots`` (what the cell records as seen).
    """
    from medvlkit.engine.answer import class_vectors
    from medvlkit.tasks.finetune.config import NO_VALIDATION, FinetuneConfig
    from medvlkit.tasks.finetune.loop import finetune, split_train_val
    from medvlkit.tasks.zeroshot import prompts_used

    assert p.vectors is not None and p.train_ds is not None and p.run is not None and p.data is not None
    r = CLIP_LORA_RECIPE
    steps = cfg.steps or int(r["steps_per_shot"]) * cfg.shots
    per_epoch = max(1, (cfg.shots * len(p.vectors.classnames)) // int(r["batch_size"]))  # finetune's full batches
    targets = clip_lora_targets(p.model)
    ft = FinetuneConfig(model=cfg.model, data=cfg.data, format=p.data.format, dataset_options=p.data.options(),
                        out_dir=str(folder), mode="prompt_ce", prompts=cfg.prompts or p.vectors.prompts.name,
                        shots=cfg.shots, train_split=cfg.train_split, val_split=NO_VALIDATION,
                        lora=f"r={r['r']},alpha={r['alpha']},dropout={r['dropout']},targets={','.join(targets)}",
                        epochs=-(-steps // per_epoch), max_steps=steps, batch_size=int(r["batch_size"]),
                        lr=float(r["lr"]), weight_decay=float(r["weight_decay"]), warmup=0, device=p.run.device,
                        workers=0, seed=cfg.seed, save_every=max(100, steps // 10))
    drawn = split_train_val(ft, progress=False)[0].items
    if sorted(drawn) != sorted(shots):
        raise MedvlkitError(f"finetune would train on {len(drawn)} images that are not the {len(shots)} shots this "
                            "cell records (the training split read two ways); nothing was trained")
    done = folder / "summary.json"
    same = done.is_file() and json.loads(done.read_text()).get("config") == ft.to_dict()
    if not same:
        finetune(ft, resume=(folder / "checkpoint.pt").is_file() and not done.is_file(), progress=p.run.progress)
    tuned = p.run.load_model(f"ft:{folder / 'best'}")
    ps = prompts_used(p.train_ds, p.vectors.prompts, "softmax")
    weights = class_vectors(tuned, ps, "softmax").positive
    adapter = FewShotAdapter(CLIP_LORA, list(p.train_ds.classnames), float(tuned.logit_scale),
                             p.vectors.positive.astype(np.float32), {"weights": weights.astype(np.float32)},
                             {"lora": ft.lora, "steps": steps, "lr": ft.lr, "batch_size": ft.batch_size,
                              "tuned_model": f"ft:{folder / 'best'}",
                              "source": "the paper's fixed recipe (no validation; no augmented views)"})
    return adapter, tuned, embed_split(tuned, p.test_ds, **(p.embed_options or {}))


GRID_METRICS = ("auroc", "accuracy")


def run_adapt_grid(cfg: AdaptConfig, methods: list[str], shots: list[int], seeds: list[int], out_dir: Path,
                   config: dict[str, Any], n_bootstrap: int = 1000, run: RunOptions | None = None,
                   data: DataOptions | None = None, progress: bool = True, model: Any = None,
                   prompt_set: Any = None) -> dict[str, Any]:
    """Methods x shots x seeds on one dataset and model (``model``, ``prompt_set``: as :func:`prepare_adapt`
    takes them): the data embedded once, each cell an :func:`adapt_cell`
    written to ``out_dir/<method>/k<K>-s<seed>/`` (a cell whose result.json has the same identity is kept: rerun the
    command to continue an interrupted grid), the zero-shot row once, then ``grid.csv`` (every cell, metrics with
    95% CIs and fit time), ``summary.csv`` / ``summary.md`` (mean and SD over seeds), ``fewshot.png`` (AUROC vs
    shots per method) and ``result.json``.

    Raises:
        MedvlkitError: an unknown method, a shot count or seed list that is empty or invalid.
    """
    from medvlkit.engine.answer import answer
    from medvlkit.engine.results import write_result
    from medvlkit.tasks.evaluate import evaluate_probs

    if not methods:
        raise MedvlkitError(f"--method: give at least one of {', '.join(ADAPT_METHODS)}")
    for m in methods:
        check_method(m)
    if not shots or min(shots) < 1 or not seeds:
        raise MedvlkitError("give at least one shot count (each >= 1) and one seed")
    run, data = run or RunOptions(), data or DataOptions()
    p = prepare_adapt(cfg, run, data, model, prompt_set)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    test, _ = align_probe_data(p.test, p.test_ds.classnames, p.vectors.classnames, False)  # as each cell scores
    zs = answer(test.X, p.vectors, p.model.logit_scale)
    ev = evaluate_probs(test.Y, None, zs.classnames, False, n_bootstrap, cfg.seed, log_probs=zs.log_probs)
    rows = [_grid_row("zeroshot", 0, None, ev.metrics, ev.ci, 0.0)]
    cells = [(m, k, s) for m in methods for k in shots for s in seeds]
    from tqdm.auto import tqdm

    for method, k, seed in tqdm(cells, desc="few-shot grid", disable=not progress, unit="fit"):
        cell = replace(cfg, method=method, shots=k, seed=seed)
        folder = out_dir / method / f"k{k}-s{seed}"
        res = _kept(folder, adapt_identity(cell, p, n_bootstrap))
        if res is None:
            res, _ = adapt_cell(cell, p, folder, config | {"method": method, "shots": k, "seed": seed}, n_bootstrap)
        rows.append(_grid_row(method, k, seed, res["metrics"], res.get("ci", {}),
                              float(res.get("adapter", {}).get("fit_seconds", 0.0))))
    summary = _summarise(rows)
    _write_csv(out_dir / "grid.csv", rows)
    _write_csv(out_dir / "summary.csv", summary)
    (out_dir / "summary.md").write_text(_markdown(summary))
    (out_dir / "fewshot.png").write_bytes(_curve_png(summary, f"{p.test_ds.full_name}, {p.model.name}"))
    metrics = {f"{r['method']}@{r['shots']}": r["auroc_mean"] for r in summary}
    write_result(out_dir, dataset=p.test_ds.full_name, model=p.model.name, task="fewshot_grid", metrics=metrics,
                 ci={}, config=config, seed=cfg.seed,
                 extra={"methods": methods, "shots": shots, "seeds": seeds, "summary": summary,
                        "prompt_set": p.vectors.prompts.name,
                        "seconds": round(time.perf_counter() - start, 1)}, headline=list(metrics)[:6])
    return {"summary": summary, "markdown": _markdown(summary), "rows": rows}


def _kept(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The result already in ``folder`` when it was computed from the same things (an interrupted grid resumes)."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except ValueError:
        return None
    return res if res.get("identity", {}).get("sha256") == identity["sha256"] else None


def _grid_row(method: str, shots: int, seed: int | None, metrics: dict, ci: dict, seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "shots": shots, "seed": "" if seed is None else seed}
    for m in GRID_METRICS:
        lo, hi = (ci.get(m) or [None, None])[:2]
        row |= {m: metrics.get(m), f"{m}_lo": lo, f"{m}_hi": hi}
    return row | {"fit_seconds": seconds}


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and SD (over seeds, ddof 1; 0 for one seed) of each metric per (method, shots), in run order."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["shots"]), []).append(r)
    out = []
    for (method, shots), rs in groups.items():
        row: dict[str, Any] = {"method": method, "shots": shots, "n_seeds": len(rs) if method != "zeroshot" else 0}
        for m in GRID_METRICS:
            v = np.array([r[m] for r in rs if r[m] is not None], dtype=float)
            row[f"{m}_mean"] = float(v.mean()) if len(v) else None
            row[f"{m}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row | {"fit_seconds": round(sum(r["fit_seconds"] for r in rs), 2)})
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| method | shots | seeds | AUROC mean (SD) | accuracy mean (SD) | fit s |", "|---|---|---|---|---|---|"]
    def cell(r: dict[str, Any], m: str) -> str:
        return "-" if r[f"{m}_mean"] is None else f"{r[f'{m}_mean']:.4f} ({r[f'{m}_sd']:.4f})"

    for r in summary:
        lines.append(f"| {r['method']} | {r['shots'] or '-'} | {r['n_seeds'] or '-'} | {cell(r, 'auroc')} | "
                     f"{cell(r, 'accuracy')} | {r['fit_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _curve_png(summary: list[dict[str, Any]], title: str) -> bytes:
    from medvlkit.engine.plots import fewshot_curve_png

    zs = next((r["auroc_mean"] for r in summary if r["method"] == "zeroshot"), None)
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for r in summary:
        if r["method"] != "zeroshot" and r["auroc_mean"] is not None:
            curves.setdefault(r["method"], []).append((r["shots"], r["auroc_mean"], r["auroc_sd"]))
    return fewshot_curve_png(curves, zs, "AUROC", title)


def fewshot_table(grids: list[dict[str, Any]], metric: str = "auroc") -> tuple[list[int], list[dict[str, Any]]]:
    """Several grids' results (``result.json`` of :func:`run_adapt_grid`, e.g. every ``eval --task fewshot`` cell) as
    one table: the shot counts (0 is zero-shot) and one row per (dataset, model, method) holding ``{shots: (mean,
    sd, best)}``, where ``best`` marks the highest mean among the methods of that grid at that shot count."""
    shots = sorted({r["shots"] for g in grids for r in g.get("summary") or []})
    rows = []
    for g in grids:
        summary = g.get("summary") or []
        top = {k: max((r[f"{metric}_mean"] for r in summary if r["shots"] == k and r[f"{metric}_mean"] is not None),
                      default=None) for k in shots}
        by_method: dict[str, dict[int, tuple[float, float, bool]]] = {}
        for r in summary:
            mean = r[f"{metric}_mean"]
            if mean is not None:
                by_method.setdefault(r["method"], {})[r["shots"]] = (mean, r[f"{metric}_sd"], mean == top[r["shots"]]
                                                                     and r["shots"] > 0)
        rows += [{"dataset": g.get("dataset", ""), "model": g.get("model", ""), "method": m, "cells": cells}
                 for m, cells in by_method.items()]
    return shots, rows


def fewshot_markdown(grids: list[dict[str, Any]], metric: str = "auroc") -> str:
    """:func:`fewshot_table` as Markdown: mean (SD over seeds), the best method at each shot count in bold."""
    shots, rows = fewshot_table(grids, metric)
    lines = ["| dataset | model | method | " + " | ".join("zero-shot" if k == 0 else f"{k} shots" for k in shots)
             + " |", "|---|---|---|" + "---|" * len(shots)]
    for r in rows:
        cells = []
        for k in shots:
            if k not in r["cells"]:
                cells.append("")
                continue
            mean, sd, best = r["cells"][k]
            text = f"{mean:.3f}" if k == 0 else f"{mean:.3f} ({sd:.3f})"
            cells.append(f"**{text}**" if best else text)
        lines.append(f"| {r['dataset']} | {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
