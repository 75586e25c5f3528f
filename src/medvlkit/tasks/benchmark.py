"""``medvlkit benchmark``: the seed projects' comparison table on one dataset, in one command.

Rows (each a full medvlkit run with its own ``result.json`` under ``out/<row>/``):

1. ``zeroshot``: the untuned model, zero-shot (a prompt set, or the phrasings fine-tuning trains on);
2. ``probe_frozen``: a linear probe on the frozen image embeddings (C chosen on validation);
3. ``lora_contrastive``: LoRA contrastive fine-tuning (captions from labels where the data has none), scored
   zero-shot with the tuned model;
4. ``probe_lora``: a linear probe on the image embeddings of the LoRA-tuned model (CLIP_COVID's best);
5. ``supervised_lora`` (only when asked with ``--rows``): LoRA on the image tower with a classification head
   (CE, or BCE for multi-label data), trained end to end.

Data with captions adds retrieval rows. Train splits train, the validation data chooses (C, best epoch), the
test split is only scored. A row whose ``result.json`` exists is not run again, so an interrupted benchmark
continues where it stopped. ``table.md`` and ``table.json`` collect the rows with their 95% CIs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)

CLASS_COLUMNS = [("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("precision", "macro_precision"),
                 ("recall", "macro_recall"), ("AUROC", "auroc")]
RETRIEVAL_COLUMNS = [("i2t R@1", "image_to_text_recall@1"), ("i2t R@5", "image_to_text_recall@5"),
                     ("i2t R@10", "image_to_text_recall@10"), ("t2i R@1", "text_to_image_recall@1"),
                     ("t2i R@5", "text_to_image_recall@5"), ("t2i R@10", "text_to_image_recall@10")]
ROWS = ("zeroshot", "probe_frozen", "lora_contrastive", "probe_lora")
OPTIONAL_ROWS = ("supervised_lora",)  # a LoRA-tuned image tower with a CE/BCE head, trained end to end


@dataclass
class BenchmarkConfig:
    """Options of one benchmark (recorded in every row's result.json).

    Attributes:
        model, data, format, out_dir: what, on what, where.
        prompts: prompt set for the zero-shot row (default: the phrasings that fine-tuning trains on).
        lora: ``--lora`` text for the fine-tuning row; ``epochs``/``max_steps``/``batch_size``/``lr``: its length.
        val_split, val_fraction, group_pattern: validation data (see ``medvlkit probe``/``finetune``).
        exclude: an audit folder whose exclusion list every split leaves out (``medvlkit audit``).
        allow_seen, training_manifest: keep validation / test images the model trained on; the manifest naming them
            (:class:`medvlkit.engine.options.DataOptions`).
        rows: which rows to run (default all that the data supports).
    """

    data: str
    out_dir: str
    model: str = "lite"
    format: str = "auto"
    exclude: str | None = None
    allow_seen: bool = False
    training_manifest: str | None = None
    prompts: str | None = None
    lora: str = "default"
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 32
    lr: float | None = None
    grad_cache: int = 0
    val_split: str | None = None
    val_fraction: float = 0.1
    group_pattern: str | None = None
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    bootstrap: int = 1000
    rows: tuple[str, ...] = ROWS
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [r for r in self.rows if r not in ROWS + OPTIONAL_ROWS]
        if bad:
            raise MedvlkitError(f"--rows {','.join(bad)}: valid rows: {', '.join(ROWS + OPTIONAL_ROWS)}")


_NOT_SETTINGS = ("rows", "workers")  # options that change neither what a row computes nor its numbers


def _settings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in _NOT_SETTINGS}


def _done(folder: Path, record: dict) -> dict | None:
    """A row's earlier result when it was computed with the same settings; an error naming the settings that
    differ otherwise (rerunning silently would mix rows computed two ways in one table)."""
    f = folder / "result.json"
    if not f.is_file():
        return None
    result = json.loads(f.read_text())
    before = _settings(result.get("config") or {})
    changed = {k: (before.get(k), v) for k, v in _settings(record).items() if before.get(k) != v}
    if changed:
        raise MedvlkitError(f"{folder} was computed with other settings: "
                            + ", ".join(f"{k}={a!r} then, {b!r} now" for k, (a, b) in changed.items())
                            + f". Use another --out, or delete {folder} to compute it again")
    return result


def _existing_rows(out: Path, record: dict, results: dict[str, dict]) -> dict[str, dict]:
    """Every row of the folder with the current settings, in table order: the requested ones plus earlier ones."""
    merged = {}
    for row in ROWS + OPTIONAL_ROWS:
        if row in results:
            merged[row] = results[row]
            continue
        try:
            found = _done(out / row, record)
        except MedvlkitError as err:
            logger.warning("row %s left out of the table: %s", row, err)
            continue
        if found is not None:
            merged[row] = found
    return merged


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True) -> dict:
    """Run (or continue) every row; write ``table.md`` and ``table.json``. Returns the table as a dict."""
    from medvlkit.models import create_model

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from medvlkit.tasks.dataaudit.registry import warn_if_unapplied

    warn_if_unapplied(cfg.data, cfg.exclude)
    test = _data_options(cfg).load(cfg.data, "test")
    record = {k: v for k, v in vars(cfg).items() if k != "extra"} | {"rows": list(cfg.rows)}
    embed = dict(batch_size=64, num_workers=cfg.workers, progress=progress)
    results: dict[str, dict] = {}
    base = create_model(cfg.model, device=_device(cfg.device))
    text_rows = [r for r in cfg.rows if r in ("zeroshot", "lora_contrastive", "probe_lora")]
    if text_rows:  # an image-only model: refused before any row runs, naming the rows that can
        base.require_text(f"benchmark rows {', '.join(text_rows)} (pass --rows probe_frozen,supervised_lora)")
    test = _data_options(cfg).held_out(test, base, "test", **embed)  # every row scores the same images

    if "zeroshot" in cfg.rows:
        results["zeroshot"] = _done(out / "zeroshot", record) or _zeroshot(base, test, cfg, out / "zeroshot",
                                                                   record, embed)
    if "probe_frozen" in cfg.rows and test.has_labels:
        results["probe_frozen"] = _done(out / "probe_frozen", record) or _probe(
            base, test, cfg, out / "probe_frozen", record, embed)
    tuned_dir = out / "lora_contrastive"
    if {"lora_contrastive", "probe_lora"} & set(cfg.rows):
        if not (tuned_dir / "best" / "finetune.json").is_file() or (tuned_dir / "checkpoint.pt").is_file() and \
                not (tuned_dir / "summary.json").is_file():
            _finetune(cfg, tuned_dir, progress)
        tuned = create_model(f"ft:{tuned_dir / 'best'}", device=_device(cfg.device))
        if "lora_contrastive" in cfg.rows:
            results["lora_contrastive"] = _done(tuned_dir, record) or _tuned_eval(tuned, test, cfg, tuned_dir, record,
                                                                                  embed)
        if "probe_lora" in cfg.rows and test.has_labels:
            results["probe_lora"] = _done(out / "probe_lora", record) or _probe(tuned, test, cfg, out / "probe_lora",
                                                                        record, embed)
    sup_dir = out / "supervised_lora"
    if "supervised_lora" in cfg.rows and test.has_labels:
        if not (sup_dir / "summary.json").is_file():
            _finetune(cfg, sup_dir, progress, mode="supervised")
        results["supervised_lora"] = _done(sup_dir, record) or _tuned_eval(
            create_model(f"ft:{sup_dir / 'best'}", device=_device(cfg.device)), test, cfg, sup_dir, record, embed)
    table = make_table(_existing_rows(out, record, results), test.name)
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / "table.md").write_text(table["markdown"] + "\n")
    return table


def _device(device: str) -> str:
    from medvlkit.models.registry import resolve_device

    return resolve_device(device)


def _zeroshot(model, test, cfg: BenchmarkConfig, out: Path, record: dict, embed: dict) -> dict:
    from medvlkit.tasks.retrieval import evaluate_retrieval, save_retrieval
    from medvlkit.tasks.zeroshot import save_zeroshot, zeroshot_classify

    out.mkdir(parents=True, exist_ok=True)
    if test.has_labels:
        res = zeroshot_classify(model, test, _prompts(cfg, test), **embed)
        result = save_zeroshot(res, test, model, out, record, cfg.bootstrap, cfg.seed, embed_options=embed)
        if not test.texts:
            return result
    if test.has_labels:  # keep both: classification metrics from above, retrieval ones added
        metrics, ci, _, _ = evaluate_retrieval(model, test, cfg.bootstrap, cfg.seed, **embed)
        return _add_metrics(result, out, metrics, ci)
    return save_retrieval(model, test, out, record, cfg.bootstrap, cfg.seed, **embed)


def _probe(model, test, cfg: BenchmarkConfig, out: Path, record: dict, embed: dict) -> dict:
    from medvlkit.tasks.probe import LinearProbe, embed_split, fit_probe, probe_splits, save_probe_run

    lp = LinearProbe(random_state=cfg.seed)

    train_ds, train, val = probe_splits(model, Path(cfg.data), _data_options(cfg), "train", cfg.val_split,
                                        cfg.val_fraction, cfg.group_pattern, cfg.seed, **embed)
    info = fit_probe(lp, train, val, train_ds.classnames, train_ds.multilabel, None, cfg.seed)
    return save_probe_run(lp, embed_split(model, test, **embed), model, test, out, record, info, cfg.bootstrap,
                          cfg.seed)


def _finetune(cfg: BenchmarkConfig, out: Path, progress: bool, mode: str = "contrastive") -> None:
    from medvlkit.tasks.finetune.config import FinetuneConfig
    from medvlkit.tasks.finetune.loop import finetune

    ft = FinetuneConfig(model=cfg.model, data=cfg.data, format=cfg.format, out_dir=str(out), mode=mode,
                        dataset_options=_data_options(cfg).options(),
                        lora=cfg.lora, val_split=cfg.val_split, val_fraction=cfg.val_fraction,
                        group_pattern=cfg.group_pattern, epochs=cfg.epochs, max_steps=cfg.max_steps,
                        batch_size=cfg.batch_size, lr=cfg.lr, grad_cache=cfg.grad_cache, device=cfg.device,
                        workers=cfg.workers, seed=cfg.seed)
    finetune(ft, resume=(out / "checkpoint.pt").is_file(), progress=progress)


def _data_options(cfg: BenchmarkConfig):
    from medvlkit.engine.options import DataOptions

    return DataOptions(cfg.format, exclude=cfg.exclude, allow_seen=cfg.allow_seen,
                       training_manifest=cfg.training_manifest)


def _prompts(cfg: BenchmarkConfig, test):
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.tasks.finetune.evaluation import caption_prompts

    return load_prompt_set(cfg.prompts) if cfg.prompts else caption_prompts(test)


def _tuned_eval(tuned, test, cfg: BenchmarkConfig, out: Path, record: dict, embed: dict) -> dict:
    from medvlkit.tasks.evaluate import evaluate_probs
    from medvlkit.tasks.finetune.evaluation import evaluate_finetuned
    from medvlkit.tasks.zeroshot import zeroshot_classify

    result = evaluate_finetuned(tuned, test, out, record, cfg.bootstrap, cfg.seed, **embed)
    if test.has_labels and test.texts:  # captioned data scored by retrieval above; add zero-shot classification
        zs = zeroshot_classify(tuned, test, _prompts(cfg, test), **embed)
        assert zs.labels is not None  # the test data has labels
        ev = evaluate_probs(zs.labels, None, zs.classnames, zs.mode == "pos_neg", cfg.bootstrap, cfg.seed,
                            log_probs=zs.log_probs)
        return _add_metrics(result, out, ev.metrics, ev.ci)
    return result


def _add_metrics(result: dict, out: Path, metrics: dict, ci: dict) -> dict:
    """A row scored two ways (classification and retrieval): both sets of metrics in its result.json."""
    from medvlkit.engine.results import write_json_atomic

    result["metrics"] |= metrics
    result["ci"] |= ci
    write_json_atomic(out / "result.json", result)
    return result


def _cell(result: dict, key: str) -> str:
    v = (result.get("metrics") or {}).get(key)
    if v is None:
        return "-"
    ci = (result.get("ci") or {}).get(key)
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{v:.3f}"


def make_table(results: dict[str, dict], dataset: str) -> dict:
    """Rows x metrics with 95% CIs, as Markdown and as numbers."""
    any_metrics = {k for r in results.values() for k in (r.get("metrics") or {})}
    columns = [c for c in CLASS_COLUMNS + RETRIEVAL_COLUMNS if c[1] in any_metrics]
    lines = [f"Test split of {dataset}; value [95% bootstrap CI].", "",
             "| method | n | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row, res in results.items():
        n = (res.get("metrics") or {}).get("n", "")
        lines.append(f"| {row} | {n} | " + " | ".join(_cell(res, k) for _, k in columns) + " |")
    numbers = {row: {k: (res.get("metrics") or {}).get(k) for _, k in columns} | {
        "ci": {k: (res.get("ci") or {}).get(k) for _, k in columns}} for row, res in results.items()}
    return {"dataset": dataset, "rows": numbers, "markdown": "\n".join(lines)}
