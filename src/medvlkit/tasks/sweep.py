"""``medvlkit eval``: a grid of models x datasets x tasks (CLIP_benchmark's sweep), ending in one report.

The tasks of a dataset follow from what it holds (``task="auto"``): labels give zero-shot classification, and a
linear probe where the data also has a ``train`` split (the probe trains there, picks C on ``val`` or a held-out
part of train, and is scored on the evaluation split); captions give image-text retrieval. Zero-shot prompts are
``--prompts`` when given, else the shipped prompt set whose classes match the dataset's (``pneumonia`` for
NORMAL/PNEUMONIA...), else templates of the class names.

``fewshot`` (asked by name, never part of ``auto``: it fits methods x shots x seeds) runs the ``adapt`` grid of
:func:`medvlkit.tasks.adapt.run_adapt_grid` on datasets with single-label classes and a ``train`` split, starting
from the same prompt set as the dataset's zero-shot cell; its folder holds ``grid.csv``, ``summary.csv`` and
``fewshot.png``, and the report puts every few-shot cell into one table.

Each cell writes ``<out>/<model>/<dataset>/<task>/result.json``; ``skip_existing`` keeps a cell whose result holds
the identity the cell would have now (what it consumed: weights, data files and labels, prompt texts, version,
options that change numbers). A failing cell (a model that does not load, data without the split) is recorded
and the grid goes on; ``sweep.json`` lists every cell with its status, and ``<out>/report`` merges the results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError, first_line

if TYPE_CHECKING:
    from medvlkit.tasks.evaluate import SubgroupOptions

logger = logging.getLogger(__name__)

TASKS = ("zeroshot", "probe", "retrieval", "fewshot")
AUTO_TASKS = ("zeroshot", "probe", "retrieval")  # what ``auto`` may pick; fewshot is asked for by name
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)
FEWSHOT_SEEDS = (0, 1, 2)


@dataclass
class SweepConfig:
    """Options of one sweep.

    Attributes:
        models: model specs; ``datasets``: dataset paths.
        tasks: ``auto`` (from what each dataset holds) or a subset of ``zeroshot``, ``probe``, ``retrieval``,
            ``fewshot``.
        split: the split every cell is scored on.
        prompts: a prompt set for every labelled dataset (None: matched per dataset).
        bootstrap, seed: resamples for the 95% CIs, and the seed of the bootstrap and the probe.
        skip_existing: keep cells whose ``result.json`` was written with the same settings.
        group_pattern: patient-id regex on file names for the probe's held-out validation (datasets without a val
            split and without patient ids of their own).
        val_split: zero-shot cells also report operating points with thresholds chosen on this split of each
            dataset (where it has one; the cell records why not where it has none).
        conformal, conformal_mode: with ``val_split``, zero-shot cells of single-label data also report prediction
            sets of this coverage fitted on it.
        subgroups, age_bands, min_subgroup, metadata: zero-shot cells also score per subgroup of these columns
            (comma-separated; those a dataset lacks are recorded as not made).
        subgroup_metric: the metric whose largest between-subgroup gap each cell reports.
        prompt_sensitivity: zero-shot cells also score each wording of their prompt set.
        fewshot_methods, shots, seeds: the grid of a ``fewshot`` cell (:data:`medvlkit.engine.fewshot.METHODS`).
    """

    models: list[str]
    datasets: list[str]
    out_dir: str
    tasks: tuple[str, ...] = ("auto",)
    split: str = "test"
    prompts: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    skip_existing: bool = False
    group_pattern: str | None = None
    val_split: str | None = None
    conformal: float | None = None
    conformal_mode: str = "marginal"
    subgroups: str | None = None
    age_bands: list[float] = field(default_factory=list)
    min_subgroup: int = 30
    metadata: str | None = None
    prompt_sensitivity: bool = False
    subgroup_metric: str = "auroc"
    fewshot_methods: tuple[str, ...] = ()
    shots: tuple[int, ...] = FEWSHOT_SHOTS
    seeds: tuple[int, ...] = FEWSHOT_SEEDS

    def __post_init__(self) -> None:
        from medvlkit.engine.fewshot import METHODS
        from medvlkit.engine.subgroups import MULTI_KEYS, SINGLE_KEYS
        from medvlkit.tasks.adapt import ADAPT_METHODS

        self.fewshot_methods = tuple(self.fewshot_methods) or METHODS
        if bad := [m for m in self.fewshot_methods if m not in ADAPT_METHODS]:
            raise MedvlkitError(f"--fewshot-methods {','.join(bad)}: valid: {', '.join(ADAPT_METHODS)} (or all: "
                                f"{', '.join(METHODS)})")
        if not self.shots or min(self.shots) < 1 or not self.seeds:
            raise MedvlkitError("--shots and --seeds: give at least one shot count (each >= 1) and one seed")

        if not self.models or not self.datasets:
            raise MedvlkitError("pass at least one --model and one --data")
        if (self.age_bands or self.metadata) and not self.subgroups:
            raise MedvlkitError("--age-bands and --metadata go with --subgroups COLUMN[,COLUMN]")
        if self.subgroup_metric not in {*SINGLE_KEYS, *MULTI_KEYS}:
            raise MedvlkitError(f"--subgroup-metric {self.subgroup_metric}: valid: "
                                f"{', '.join(dict.fromkeys([*SINGLE_KEYS, *MULTI_KEYS]))}")
        from medvlkit.tasks.evaluate import check_val_split

        check_val_split(self.val_split, self.split, self.conformal)
        bad = [t for t in self.tasks if t not in (*TASKS, "auto")]
        if bad or ("auto" in self.tasks and len(self.tasks) > 1):
            raise MedvlkitError(f"--task {','.join(self.tasks)}: valid: auto, or a comma-separated subset of "
                                f"{', '.join(TASKS)}")


@dataclass
class Cell:
    """One (model, dataset, task) run of the grid and what became of it."""

    model: str
    data: str
    task: str
    out: str
    status: str = "pending"   # done, skipped (result kept), failed, not applicable
    error: str = ""
    prompts: str = ""          # the prompt set a zero-shot cell used
    headline: dict = field(default_factory=dict)


def slug(text: str) -> str:
    """A readable folder name for a spec or path, unique through a short hash of the whole text."""
    tail = Path(text.split(":", 1)[-1]).name or text
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{text.split(':', 1)[0]}-{tail}" if ":" in text else tail)
    return f"{readable.strip('-')[:40]}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def dataset_tasks(ds, data: str, opts: DataOptions, wanted: tuple[str, ...], prompts: str | None = None
                  ) -> dict[str, str]:
    """The tasks to run on ``ds`` (the evaluation split of ``data``) -> '' when applicable, else why not."""
    from medvlkit.data.prompts import is_number

    has_train = _has_split(data, opts, "train")
    numbered = ds.has_labels and not prompts and any(is_number(c) for c in ds.classnames)
    why = {"zeroshot": ("no labels" if not ds.has_labels else
                        f"classes named by numbers ({', '.join(ds.classnames[:5])}): name them or pass --prompts"
                        if numbered else ""),
           "probe": "" if ds.has_labels and has_train else ("no labels" if not ds.has_labels else "no train split"),
           "retrieval": "" if ds.texts else "no captions"}
    why["fewshot"] = why["zeroshot"] or why["probe"] or ("multi-label data: the few-shot methods fit one class per "
                                                          "image" if ds.multilabel else "")
    if wanted == ("auto",):
        return {t: r for t, r in why.items() if not r and t in AUTO_TASKS}
    return {t: why[t] for t in wanted}


def _has_split(data: str, opts: DataOptions, split: str) -> bool:
    try:
        opts.load(data, split)
    except MedvlkitError:
        return False
    return True


def matching_prompts(dataset, name: str | None = None):
    """The prompt set for a labelled dataset: ``name`` when given; else the shipped set of the dataset's domain (or
    of any domain, when the dataset's is unknown) whose classes include the dataset's by name (never by a bare
    number), with the fewest extra classes; else generic prompts of the class names.

    Raises:
        MedvlkitError: the class names are numbers (nothing a prompt could describe); ``name``'s set lacks a class.
    """
    from medvlkit.data.prompts import is_number, list_prompt_sets, load_prompt_set, prompt_set_from_classes, same_domain

    if name:
        chosen = load_prompt_set(name)
        chosen.match(dataset.classnames)
        return chosen
    if any(is_number(c) for c in dataset.classnames):
        raise MedvlkitError(f"'{dataset.name}' names its classes {dataset.classnames}: numbers are not names a prompt "
                            "can describe, so no prompt set is chosen for them; name the classes (a 'label_names' "
                            "array in an .npz, named class folders) or pass --prompts")
    candidates = []
    for set_name in list_prompt_sets():
        ps = load_prompt_set(set_name)
        if not same_domain(ps.domain, dataset.domain) or (ps.mode == "pos_neg") != dataset.multilabel:
            continue
        try:
            ps.match(dataset.classnames)
        except MedvlkitError:
            continue
        candidates.append((len(ps.classes) - len(dataset.classnames), set_name, ps))
    if candidates:
        return min(candidates, key=lambda c: c[:2])[2]
    return prompt_set_from_classes(dataset.classnames, "pos_neg" if dataset.multilabel else "softmax")


def run_sweep(cfg: SweepConfig, run: RunOptions | None = None, data: DataOptions | None = None) -> list[Cell]:
    """Run the grid (models outermost: each model is loaded once) and write ``sweep.json`` (the CLI draws the report
    page from the finished cells).

    With ``skip_existing`` a cell is kept when its ``result.json`` holds the identity the cell would have now
    (:func:`cell_identity`: the model's weights, the data's files and labels, the prompt texts, medvlkit's version and
    the options that change numbers); anything else runs again.

    Returns:
        every cell with its status; failed cells carry their one-line error.
    """
    from medvlkit.tasks.dataaudit.registry import warn_if_unapplied
    run, data = run or RunOptions(), data or DataOptions()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in cfg.datasets:
        warn_if_unapplied(path, data.exclude, run.cache_dir)
    from tqdm.auto import tqdm

    plan, splits = _plan(cfg, data, out)
    # the whole grid's progress, with an ETA (a sweep of several models and datasets runs for hours on a CPU)
    overall = tqdm(total=sum(c.status == "pending" for c in plan), desc="eval: cells", unit="cell",
                   disable=not run.progress)
    for model_spec in cfg.models:
        cells = [c for c in plan if c.model == model_spec and c.status == "pending"]
        if not cells:
            continue
        try:
            model = run.load_model(model_spec)
        except MedvlkitError as err:
            for c in cells:
                c.status, c.error = "failed", f"model: {first_line(err)}"
            overall.update(len(cells))
            continue
        held: dict[str, object] = {}  # each split without the images this model trained on, read once a model
        vals: dict[str, object] = {}  # and each --val-split, for zero-shot cells: read once a model too
        for c in cells:
            try:
                if c.data not in held:
                    held[c.data] = data.held_out(splits[c.data], model, "test", **run.embed_kwargs())
                if c.task == "zeroshot" and c.data not in vals:
                    vals[c.data] = _validation(c, model, cfg, run, data)
            except MedvlkitError as err:
                c.status, c.error = "failed", f"data: {first_line(err)}"
                overall.update()
                continue
            if cfg.skip_existing and _same_result(c, model, held[c.data], cfg, run, data, vals.get(c.data)):
                c.status = "skipped"
            else:
                _run_cell(c, model, held[c.data], cfg, run, data, vals.get(c.data))
            overall.update()
    overall.close()
    for c in plan:
        if c.status in ("done", "skipped"):
            c.headline, c.prompts = _headline(Path(c.out))
    (out / "sweep.json").write_text(json.dumps({"config": asdict(cfg) | {"run": run.to_dict(),
                                                                         "data": data.to_dict()},
                                                "cells": [asdict(c) for c in plan]}, indent=1) + "\n")
    return plan


def _plan(cfg: SweepConfig, data: DataOptions, out: Path) -> tuple[list[Cell], dict]:
    """Every cell of the grid, and each readable dataset's evaluation split (read once, for every model and task);
    a dataset that cannot be read makes its cells failed, not the sweep."""
    plan, splits = [], {}
    for path in cfg.datasets:
        try:
            splits[str(path)] = data.load(path, cfg.split)
            tasks = dataset_tasks(splits[str(path)], path, data, cfg.tasks, cfg.prompts)
            error = ""
        except MedvlkitError as err:
            tasks, error = {t: "" for t in (AUTO_TASKS if cfg.tasks == ("auto",) else cfg.tasks)}, first_line(err)
        for model in cfg.models:
            for task, why_not in tasks.items():
                cell = Cell(model, str(path), task, str(out / slug(model) / slug(str(path)) / task))
                if error:
                    cell.status, cell.error = "failed", f"data: {error}"
                elif why_not:
                    cell.status, cell.error = "not applicable", why_not
                plan.append(cell)
    return plan, splits


def _record(cell: Cell, cfg: SweepConfig) -> dict:
    """The sweep's settings of a cell, recorded in its config for people (skip_existing compares identities)."""
    return {"model": cell.model, "data": cell.data, "task": cell.task, "split": cfg.split, "prompts": cfg.prompts,
            "bootstrap": cfg.bootstrap, "seed": cfg.seed, "group_pattern": cfg.group_pattern,
            "val_split": cfg.val_split} | ({"fewshot_methods": list(cfg.fewshot_methods), "shots": list(cfg.shots),
                                          "seeds": list(cfg.seeds)} if cell.task == "fewshot" else {})


def _probe_cfg(cell: Cell, cfg: SweepConfig):
    from medvlkit.tasks.probe import ProbeTaskConfig

    return ProbeTaskConfig(model=cell.model, data=cell.data, test_split=cfg.split, seed=cfg.seed,
                           group_pattern=cfg.group_pattern)


def cell_identity(cell: Cell, model, ds, cfg: SweepConfig, run: RunOptions, data: DataOptions, val=None) -> dict:
    """The identity the cell's result would have if it ran now: the task's own identity function, fed what the
    task would consume (``val``: a zero-shot cell's validation split, :func:`_validation`)."""
    from medvlkit.tasks.probe import probe_datasets, probe_identity
    from medvlkit.tasks.retrieval import retrieval_identity
    from medvlkit.tasks.zeroshot import clinical_identity, prompts_used, zeroshot_identity

    embed = run.embed_kwargs()
    if cell.task == "probe":
        probe_cfg = _probe_cfg(cell, cfg)
        return probe_identity(probe_cfg, model, probe_datasets(probe_cfg, data, model, embed), cfg.bootstrap, embed)
    if cell.task == "zeroshot":
        prompts = matching_prompts(ds, cfg.prompts)
        groups, _ = _subgroups(cfg, ds)
        return zeroshot_identity(model, ds, prompts_used(ds, prompts).identity(), cfg.bootstrap, cfg.seed, embed,
                                 clinical_identity(val, _clinical(cfg), groups, cfg.prompt_sensitivity))
    return retrieval_identity(model, ds, cfg.bootstrap, cfg.seed, embed)


def _same_result(cell: Cell, model, ds, cfg: SweepConfig, run: RunOptions, data: DataOptions, val=None) -> bool:
    """Whether the cell's result.json was computed from exactly what the cell would consume now (a ``fewshot`` cell
    always runs: its grid keeps each fit whose identity is unchanged, :func:`medvlkit.tasks.adapt.run_adapt_grid`)."""
    path = Path(cell.out) / "result.json"
    if cell.task == "fewshot" or not path.is_file():
        return False
    try:
        recorded = (json.loads(path.read_text()).get("identity") or {}).get("sha256")
        return recorded == cell_identity(cell, model, ds, cfg, run, data, val)["sha256"]
    except (json.JSONDecodeError, AttributeError, OSError):
        return False
    except MedvlkitError:  # the cell cannot run as configured: running it reports why
        return False


def _run_cell(cell: Cell, model, ds, cfg: SweepConfig, run: RunOptions, data: DataOptions, val=None) -> None:
    """Run one cell into its folder (``val``: a zero-shot cell's validation split); its status and error say how it
    went."""
    from medvlkit.tasks.probe import run_probe_task
    from medvlkit.tasks.prompt_sensitivity import check_wordings
    from medvlkit.tasks.retrieval import save_retrieval
    from medvlkit.tasks.zeroshot import clinical_figures, clinical_identity, save_zeroshot, zeroshot_classify

    out = Path(cell.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"sweep": _record(cell, cfg)} | run.to_dict() | data.to_dict()
    logger.info("eval: %s on %s, %s", cell.model, cell.data, cell.task)
    try:
        if cell.task == "probe":
            run_probe_task(_probe_cfg(cell, cfg), out, config, cfg.bootstrap, run, data, model=model)
        elif cell.task == "zeroshot":
            prompts = matching_prompts(ds, cfg.prompts)
            cell.prompts = config["prompts"] = prompts.name
            embed = run.embed_kwargs()
            res = zeroshot_classify(model, ds, prompts, **embed)
            extra: dict = {}
            if cfg.val_split and val is None:
                extra["operating_points_not_made"] = f"the data has no labelled '{cfg.val_split}' split"
            groups, lacking = _subgroups(cfg, ds)
            if lacking:
                extra["subgroups_not_made"] = {c: "no such column in this data" for c in lacking}
            sensitivity = cfg.prompt_sensitivity
            if sensitivity:
                try:
                    check_wordings(prompts)
                except MedvlkitError as err:  # a set with one wording: said, the cell's other results kept
                    sensitivity, extra["prompt_sensitivity_not_made"] = False, first_line(err)
            extra |= clinical_figures(model, ds, prompts, None, res, val, _clinical(cfg), sensitivity, cfg.bootstrap,
                                      cfg.seed, **embed)
            save_zeroshot(res, ds, model, out, config, cfg.bootstrap, cfg.seed, extra, embed, groups,
                          clinical_identity(val, _clinical(cfg), groups, cfg.prompt_sensitivity))
        elif cell.task == "fewshot":
            from medvlkit.tasks.adapt import AdaptConfig, run_adapt_grid

            prompts = matching_prompts(ds, cfg.prompts)  # the zero-shot cell's set: the grid's zero-shot row is it
            cell.prompts = config["prompts"] = prompts.name
            adapt = AdaptConfig(model=cell.model, data=cell.data, prompts=cfg.prompts, seed=cfg.seed,
                                test_split=cfg.split)
            run_adapt_grid(adapt, list(cfg.fewshot_methods), list(cfg.shots), list(cfg.seeds), out, config,
                           cfg.bootstrap, run, data, progress=run.progress, model=model, prompt_set=prompts)
        else:
            save_retrieval(model, ds, out, config, cfg.bootstrap, cfg.seed, **run.embed_kwargs())
    except MedvlkitError as err:
        cell.status, cell.error = "failed", first_line(err)
        return
    cell.status = "done"


def _clinical(cfg: SweepConfig):
    """The operating-point and prediction-set options of the sweep's zero-shot cells."""
    from medvlkit.tasks.evaluate import ClinicalOptions

    return ClinicalOptions(conformal=cfg.conformal, conformal_mode=cfg.conformal_mode)


def _subgroups(cfg: SweepConfig, ds) -> tuple[SubgroupOptions | None, list[str]]:
    """The subgroup options for a dataset (its own attributes and the metadata file's columns), and the requested
    columns it lacks."""
    from medvlkit.data.metadata import read_metadata
    from medvlkit.tasks.evaluate import SubgroupOptions

    if not cfg.subgroups:
        return None, []
    wanted = [c.strip() for c in cfg.subgroups.split(",") if c.strip()]
    known = set(ds.attributes)
    if cfg.metadata:
        known |= {k for v in read_metadata(Path(cfg.metadata)).values() for k in v}
    have = [c for c in wanted if c in known]
    opts = SubgroupOptions(have, list(cfg.age_bands), cfg.min_subgroup, cfg.subgroup_metric,
                           Path(cfg.metadata) if cfg.metadata else None) if have else None
    return opts, [c for c in wanted if c not in known]


def _validation(cell: Cell, model, cfg: SweepConfig, run: RunOptions, data: DataOptions):
    """The labelled ``--val-split`` of a zero-shot cell's dataset without the model's training images, or None
    (not asked, or the data has no such labelled split)."""
    if not cfg.val_split:
        return None
    try:
        val = data.load(cell.data, cfg.val_split)
    except MedvlkitError:
        return None
    return data.held_out(val, model, "val", **run.embed_kwargs()) if val.has_labels else None


def _headline(folder: Path) -> tuple[dict, str]:
    """A finished cell's headline metrics and the prompt set it used ("" for tasks without prompts)."""
    from medvlkit.engine.results import read_result

    result = read_result(folder / "result.json")
    metrics = result.get("metrics") or {}
    return {k: metrics.get(k) for k in result.get("headline") or []}, str(result.get("prompt_set") or "")
