"""The ``medvlkit`` command line. It parses options, calls the public API and prints; no logic lives here."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from medvlkit.apps.display import console, err_console
from medvlkit.apps.serve import TOKEN_ENV as SERVE_TOKEN_ENV
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Medical vision-language models: embed, classify zero-shot, evaluate. "
                       "Every command has --help with an example, and takes --config FILE.json (its options as a "
                       "JSON object, e.g. a run's config.json; flags given as well win), --offline (models from the "
                       "local caches only, as HF_HUB_OFFLINE=1) and --debug (tracebacks).")

# Options shared by the commands that run a model over a dataset.
ModelOpt = typer.Option("lite", "--model", "-m", help="lite, a preset (medvlkit models), hf:DIR, openai-ckpt:FILE, "
                                                      "open_clip:NAME")
DataOpt = typer.Option(..., "--data", "-d", help="image folder, CSV, JSONL, .npz, MedPix-2.0 folder, or a PACS: "
                                                 "dicomweb:http://host:port/dicom-web/instances?Modality=CR")
SplitOpt = typer.Option(None, "--split", help="train, val or test, where the data has splits")
FormatOpt = typer.Option("auto", "--format", help="dataset adapter (medvlkit datasets); auto detects it")


def _out_folder(value: Path | None) -> Path | None:
    """--out must be usable as a folder: checked when the options are parsed, before any work is done."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is an existing file, not a folder; choose another --out")
    return _parents_are_folders(value)


def _out_file(value: Path | None) -> Path | None:
    """--out naming a file to write: not a folder, and its folder can be made."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; --out names the file to write (e.g. {value}/pairs.jsonl)")
    return _parents_are_folders(value)


def _parents_are_folders(value: Path | None) -> Path | None:
    if value is not None and any(p.exists() and not p.is_dir() for p in value.parents):
        raise typer.BadParameter(f"{value}: a parent of it is a file; choose another --out")
    return value


OutOpt = typer.Option(None, "--out", "-o", callback=_out_folder, help="output folder (default runs/<timestamp>-<verb>)")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, mps or auto (default: a GPU when visible)")
PrecisionOpt = typer.Option("fp32", "--precision", help="the weights' dtype for inference: fp32, fp16 or bf16")
EngineOpt = typer.Option("auto", "--engine", help="what computes the image tower: auto (ONNX Runtime for lite on a CPU "
                                                  "in fp32 when the onnx extra is installed: ~3x faster, verified "
                                                  "against PyTorch within 1e-4; else PyTorch), torch or onnx")
BatchOpt = typer.Option(64, "--batch-size", min=1, help="images per forward pass")
WorkersOpt = typer.Option(min(8, os.cpu_count() or 2), "--workers", min=0,
                          help="image loading processes (0 = main process; default: the CPU count, at most 8)")
OnErrorOpt = typer.Option("fail", "--on-error", help="fail on the first unreadable image, or skip and count it")
NoCacheOpt = typer.Option(False, "--no-cache", help="do not read or write the embedding cache")
CacheDirOpt = typer.Option(None, "--cache-dir", help="embedding cache folder (default $MEDVLKIT_CACHE or "
                                                     "~/.cache/medvlkit)")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bar")
TokenizerOpt = typer.Option(None, "--tokenizer", help="tokenizer folder for openai-ckpt:, open_clip:DIR, gloria:, "
                            "pmc-clip:, flair:, conch:, unimed: and bmc: models")
PathColOpt = typer.Option(None, "--path-column", help="CSV column with image paths")
LabelColsOpt = typer.Option(None, "--label-columns", help="comma-separated CSV label columns")
UncertainOpt = typer.Option(None, "--uncertain", help="CheXpert -1 labels (CSV data): ignore (NaN; default), zeros "
                                                       "or ones")
ImageRootOpt = typer.Option(None, "--image-root", help="folder that CSV/JSONL image paths are relative to")
GroupColOpt = typer.Option(None, "--group-column", help="CSV column with patient ids, for patient-level held-out "
                                                         "validation (default: Patient ID, patient_id, subject_id)")
ExcludeOpt = typer.Option(None, "--exclude", help="an audit folder (medvlkit audit --out DIR): leave out the train/val "
                                                  "images it lists (duplicates of, or patients in, another split)")
AllowSeenOpt = typer.Option(False, "--allow-seen", help="keep validation and test images the model was trained on "
                                                      "(set aside by default; result.json says how many)")
TrainingManifestOpt = typer.Option(None, "--training-manifest", help="file listing the model's training images "
                                                                     "(medvlkit pixel-sha1 list or CSV of image ids); "
                                                                     "default: the one the model ships")
LabelsOpt = typer.Option(None, "--labels", help="dicomweb: data: a CSV of labels keyed by SOPInstanceUID, "
                                                 "SeriesInstanceUID or StudyInstanceUID (a label column or 0/1 "
                                                 "columns; a split column for --split)")
StowOpt = typer.Option(False, "--stow", help="dicomweb: data: store the results on the PACS (STOW-RS), one DICOM "
                                              "object per image that references it; listed in stow.json")
BootstrapOpt = typer.Option(1000, "--bootstrap", min=0, help="bootstrap resamples for 95% CIs (0: none)")
GateOpt = typer.Option(False, "--gate", help="first drop images the medical-image gate rejects (listed in result.json)")
GateThrOpt = typer.Option(None, "--gate-threshold", help="P(medical) threshold for --gate (default: the model's)")
SubgroupsOpt = typer.Option(None, "--subgroups", help="metadata column(s) to score per subgroup, comma-separated "
                                                       "(e.g. sex,age); from the dataset (MedPix: age, sex, plane, "
                                                       "modality) or --metadata")
AgeBandsOpt = typer.Option(None, "--age-bands", help="edges turning a numeric column into bands, e.g. 18,40,65")
MinSubgroupOpt = typer.Option(30, "--min-subgroup", help="smaller subgroups are listed, not scored")
SubgroupMetricOpt = typer.Option("auroc", "--subgroup-metric", help="the metric whose largest gap is reported")
MetadataOpt = typer.Option(None, "--metadata", help="CSV or JSONL with a 'file' column and metadata columns")
ConformalOpt = typer.Option(None, "--conformal", help="also split-conformal prediction sets of this coverage, e.g. "
                                                      "0.9, fitted on validation predictions (single-label)")
ConformalModeOpt = typer.Option("marginal", "--conformal-mode", help="marginal (coverage on average) or class (for "
                                                                     "each true class)")
PromptSensitivityOpt = typer.Option(False, "--prompt-sensitivity", help="also score each template and each synonym of "
                                                                        "the prompt set alone: the spread, the best "
                                                                        "and worst wording, and classes whose prompts "
                                                                        "point the wrong way")


def _check_stow(stow: bool, data: str) -> None:
    """``--stow`` writes back to the PACS the images came from: refused before any work for other data."""
    if stow and not str(data).startswith("dicomweb:"):
        raise MedvlkitError("--stow stores results on the PACS the images came from; it needs --data dicomweb:...")


def _stow(stow: bool, out_dir: Path, task: str) -> None:
    if stow:
        from medvlkit.tasks.pacs import stow_run

        summary = stow_run(out_dir, task)
        console.print(f"stored {summary['n_stored']} DICOM object(s) on {', '.join(summary['pacs'])} (STOW-RS); "
                      f"listed in {out_dir}/stow.json")


def _print_version(value: bool) -> None:
    if value:
        from medvlkit import __version__

        print(f"medvlkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="print the version and exit"),
          debug: bool = typer.Option(False, "--debug", help="show a traceback for errors, and debug logging "
                                                            "(also accepted after the verb)")) -> None:
    """Medical vision-language models: embed, classify zero-shot, evaluate."""


# The shared options: every verb that runs a model or reads data gets the same flags, gathered into one object.
_MODEL_FLAGS = {"device": (str, DeviceOpt), "precision": (str, PrecisionOpt), "tokenizer": (str, TokenizerOpt),
                "engine": (str, EngineOpt)}
FastDecodeOpt = typer.Option(False, "--fast-decode", help="decode large JPEGs at a reduced scale (at least twice the "
                                                         "input size) before resizing: several times faster on "
                                                         "2-3k px radiographs, slightly different pixels")
_EMBED_FLAGS = {"batch_size": (int, BatchOpt), "workers": (int, WorkersOpt), "on_error": (str, OnErrorOpt),
                "no_cache": (bool, NoCacheOpt), "cache_dir": (Path, CacheDirOpt), "quiet": (bool, QuietOpt),
                "fast_decode": (bool, FastDecodeOpt)}
_DATA_FLAGS = {"fmt": (str, FormatOpt), "path_column": (str, PathColOpt), "label_columns": (str, LabelColsOpt),
               "uncertain": (str, UncertainOpt), "image_root": (str, ImageRootOpt),
               "group_column": (str, GroupColOpt), "exclude": (str, ExcludeOpt),
               "allow_seen": (bool, AllowSeenOpt), "training_manifest": (str, TrainingManifestOpt),
               "labels": (str, LabelsOpt)}

FILLED: Any = None  # the default of a verb's ``run`` / ``data_opts``: @shared_options always passes the real value


def shared_options(model: bool = True, embed: bool = True, data: bool = True):
    """Decorator (under ``@app.command()``): the verb gets the shared model and embedding flags as
    ``run: RunOptions`` and the dataset-reading flags as ``data_opts: DataOptions``; its own signature lists only its
    own options. Plugins use it for their verbs too (README, Extending medvlkit)."""
    flags = {**(_MODEL_FLAGS if model else {}), **(_EMBED_FLAGS if embed else {}), **(_DATA_FLAGS if data else {})}

    def decorate(fn):
        sig = inspect.signature(fn)
        own = [p for name, p in sig.parameters.items() if name not in ("run", "data_opts")]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                 for name, (kind, option) in flags.items()]

        @functools.wraps(fn)
        def verb(**kwargs):
            got = {name: kwargs.pop(name) for name in flags}
            if model or embed:
                kwargs["run"] = _run_options(got)
            if data:
                kwargs["data_opts"] = DataOptions(got["fmt"], **{k: got[k] for k in _DATA_FLAGS if k != "fmt"})
            return fn(**kwargs)

        verb.__signature__ = sig.replace(parameters=own + added)
        return verb
    return decorate


OverwriteOpt = typer.Option(False, "--overwrite", help="write into an --out that already holds files (they are "
                                                      "replaced; files the run does not write stay)")


def guard_out(*continue_flags: str):
    """Decorator (under ``@app.command()``, above ``@shared_options``): the verb gets ``--overwrite`` and refuses an
    existing, non-empty ``--out`` without it, before any work, so an earlier run's results are never replaced
    without a word. ``continue_flags`` name the verb's own flags that mean "continue the run in --out"
    (``--resume``, ``--skip-existing``), which allow it too."""

    def decorate(fn):
        sig = inspect.signature(fn)
        added = inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=OverwriteOpt, annotation=bool)

        @functools.wraps(fn)
        def verb(**kwargs):
            overwrite = kwargs.pop("overwrite")
            out = kwargs.get("out")
            if out is not None and not overwrite and not any(kwargs.get(f) for f in continue_flags):
                check_out_free(Path(out), continue_flags)
            return fn(**kwargs)

        verb.__signature__ = sig.replace(parameters=[*sig.parameters.values(), added])
        return verb
    return decorate


def check_out_free(out: Path, continue_flags: tuple[str, ...] = ()) -> None:
    """Refuse an ``--out`` that exists and is not empty (a folder with entries, or a file).

    Raises:
        MedvlkitError: naming the folder and the flags that allow it.
    """
    if out.is_dir() and any(out.iterdir()) or out.is_file():
        also = "".join(f" or --{f.replace('_', '-')}" for f in continue_flags)
        raise MedvlkitError(f"--out {out} already holds {'files' if out.is_dir() else 'a file'} (an earlier run?); "
                            f"choose another --out, or pass --overwrite{also}")


def _run_options(got: dict) -> RunOptions:
    """The RunOptions of the shared flags a verb has (the defaults for those it has not)."""
    same = {k: got[k] for k in ("device", "precision", "tokenizer", "batch_size", "workers", "on_error",
                                "fast_decode", "engine") if k in got}
    return RunOptions(**same, cache=not got.get("no_cache", False), progress=not got.get("quiet", False),
                      cache_dir=None if got.get("cache_dir") is None else str(got["cache_dir"]))


def _config_from(cls, values: dict, **overrides):
    """A config dataclass from the CLI options of the same names, plus ``overrides``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names} | overrides)


def _out(out: Path | None, verb: str) -> Path:
    from medvlkit.engine.results import default_out_dir

    return out or default_out_dir(verb)


@app.command()
def models(pattern: str = typer.Argument("*", help="shell pattern over preset names, e.g. '*clip*'"),
           as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the named backbones: source, licence, preprocessing, whether their weights are on this machine, and how
    to fetch them ahead of time.

    Example: medvlkit models '*clip*'
    """
    from medvlkit.apps.display import print_models
    from medvlkit.models import list_models
    from medvlkit.models.registry import preset_status

    presets = list_models(pattern)
    status = {p.name: preset_status(p) for p in presets}
    if as_json:
        print(json.dumps([p.to_dict() | {"on_this_machine": status[p.name]} for p in presets], indent=1))
        return
    print_models(presets, status)


@app.command()
def download(name: str = typer.Argument(..., help="a preset (medvlkit models) or hf:org/name[@revision], "
                                                  "open_clip:hf-hub:org/name, biomedclip:org/name, biovil:org/name")
             ) -> None:
    """Fetch a model's files from the hub into the Hugging Face cache now, for a machine that goes offline later
    (runs then find them there, also with --offline / HF_HUB_OFFLINE=1).

    Example: medvlkit download biomedclip
    """
    from medvlkit.models.registry import download as fetch_model

    snap = fetch_model(name)
    print(f"{name}: {snap.ref.repo_id} at commit {snap.commit} in {snap.path}")
    for file, sha in snap.files.items():
        print(f"  {file} sha256 {sha}")


@app.command()
@shared_options(model=False, embed=False)
def datasets(data: Path = typer.Option(None, "--data", "-d", help="describe this dataset instead of listing formats"),
             split: str = SplitOpt, data_opts: DataOptions = FILLED) -> None:
    """List dataset formats and prompt sets, or describe one dataset (--data).

    Example: medvlkit datasets --data ../shared/data/chest_xray_pneumonia --split test
    """
    from medvlkit.apps.display import print_dataset, print_formats
    from medvlkit.data import list_adapters
    from medvlkit.data.prompts import list_prompt_sets

    if data is not None:
        return print_dataset(data_opts.load(data, split))
    print_formats(list_adapters(), list_prompt_sets())


@app.command()
@guard_out()
@shared_options()
def embed(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt, out: Path = OutOpt,
          gate: bool = GateOpt, gate_threshold: float = GateThrOpt, run: RunOptions = FILLED,
          data_opts: DataOptions = FILLED) -> None:
    """Embed a dataset's images: writes embeddings.npy, files.csv, result.json (with images/s).

    Example: medvlkit embed --model hf:./clip-vit-b32 --data ../shared/data/chest_xray_pneumonia --split test
    """
    from medvlkit.apps.display import print_embedded, print_gated
    from medvlkit.tasks.embedding import embed_task

    config = _jsonable(dict(locals()))
    out_dir = _out(out, "embed")
    result = embed_task(run.load_model(model), data_opts.load(data, split), out_dir, config, run, gate, gate_threshold)
    if result is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    print_gated(result)
    print_embedded(result, out_dir)


@app.command()
@guard_out()
@shared_options()
def zeroshot(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt,
             prompts: str = typer.Option(None, "--prompts", "-p", help="shipped prompt set name or a .json file"),
             classes: str = typer.Option(None, "--classes", help="comma-separated class names (generic prompts); "
                                                                 "with --prompts, the set restricted to them"),
             mode: str = typer.Option(None, "--mode", help="softmax (one label) or pos_neg (multi-label); default: "
                                                           "the prompt set's"),
             out: Path = OutOpt, bootstrap: int = BootstrapOpt,
             seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
             gate: bool = GateOpt, gate_threshold: float = GateThrOpt,
             subgroups: str = SubgroupsOpt, age_bands: str = AgeBandsOpt, min_subgroup: int = MinSubgroupOpt,
             subgroup_metric: str = SubgroupMetricOpt, metadata: Path = MetadataOpt,
             val_split: str = typer.Option(None, "--val-split", help="a labelled split of the same data (e.g. val) "
                                                                     "where operating-point thresholds are chosen"),
             specificity: str = typer.Option("0.9,0.95", "--specificity", help="with --val-split: sensitivity at "
                                                                               "these specificities"),
             sensitivity: str = typer.Option("0.9,0.95", "--sensitivity", help="with --val-split: specificity at "
                                                                               "these sensitivities"),
             prevalence: float = typer.Option(None, "--prevalence", help="with --val-split: PPV/NPV at this "
                                                                         "prevalence"),
             conformal: float = ConformalOpt, conformal_mode: str = ConformalModeOpt,
             prompt_sensitivity: bool = PromptSensitivityOpt, stow: bool = StowOpt,
             run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Zero-shot classification from text prompts; writes result.json and predictions.csv.

    Example: medvlkit zeroshot --data ../shared/data/chest_xray_pneumonia --split test --prompts pneumonia
    """
    from medvlkit.apps.display import (
        print_conformal,
        print_gated,
        print_metrics,
        print_operating_points,
        print_predictions,
        print_prompt_sensitivity,
        print_prompt_set,
        print_subgroups,
    )
    from medvlkit.data.prompts import resolve_prompt_set
    from medvlkit.tasks.zeroshot import zeroshot_task

    config = _jsonable(dict(locals()))
    _check_stow(stow, data)
    ps, ds = resolve_prompt_set(prompts, classes, mode), data_opts.load(data, split)  # cheap checks first
    groups = _subgroups(subgroups, age_bands, min_subgroup, subgroup_metric, metadata)
    if prompt_sensitivity:
        from medvlkit.tasks.prompt_sensitivity import check_wordings

        check_wordings(ps)
    for flag, asked in (("--subgroups", groups), ("--prompt-sensitivity", prompt_sensitivity),
                        ("--val-split", val_split)):
        if asked and not ds.has_labels:
            raise MedvlkitError(f"{flag} needs labelled data; {ds.full_name} has no labels")
    from medvlkit.tasks.evaluate import ClinicalOptions, check_val_split

    check_val_split(val_split, split, conformal)
    clinical, val_ds = None, None
    if val_split:
        clinical = ClinicalOptions(None, _levels(specificity, "--specificity"), _levels(sensitivity, "--sensitivity"),
                                   prevalence, conformal=conformal, conformal_mode=conformal_mode)
        val_ds = data_opts.load(data, val_split)
        if not val_ds.has_labels:
            raise MedvlkitError(f"--val-split {val_split}: {val_ds.full_name} has no labels")
    m = _load_with_scope(run, model)
    out_dir = _out(out, "zeroshot")
    ds = data_opts.held_out(ds, m, "test", **run.embed_kwargs())
    if val_ds is not None:
        val_ds = data_opts.held_out(val_ds, m, "val", **run.embed_kwargs())
    result = zeroshot_task(m, ds, ps, out_dir, config, mode, run, bootstrap, seed, gate, gate_threshold, groups,
                           prompt_sensitivity, val_ds, clinical)
    print_gated(result)
    print_prompt_set(result)
    print_metrics(result)
    print_operating_points(result)
    print_conformal(result)
    print_subgroups(result)
    print_prompt_sensitivity(result)
    if not result.get("metrics"):  # no labels: the answers themselves
        print_predictions(out_dir / "predictions.csv")
    console.print(f"wrote {out_dir}/result.json and predictions.csv")
    _stow(stow, out_dir, "zeroshot")


@app.command()
@guard_out()
@shared_options()
def retrieve(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt, out: Path = OutOpt,
             bootstrap: int = BootstrapOpt, seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
             run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Image-to-text and text-to-image retrieval on image-caption data: recall@1/5/10, mean/median rank.

    Example: medvlkit retrieve --data ../shared/data/medpix2 --split test
    """
    from medvlkit.apps.display import print_metrics
    from medvlkit.tasks.retrieval import save_retrieval

    config = _jsonable(dict(locals()))
    ds, m, out_dir = data_opts.load(data, split), run.load_model(model), _out(out, "retrieve")
    ds = data_opts.held_out(ds, m, "test", **run.embed_kwargs())
    print_metrics(save_retrieval(m, ds, out_dir, config, bootstrap, seed, **run.embed_kwargs()))
    console.print(f"wrote {out_dir}/result.json")


@app.command()
@guard_out()
def calibrate(predictions: Path = typer.Option(..., "--predictions", help="VALIDATION predictions.csv (with true "
                                                                          "labels) from zeroshot"),
              out: Path = OutOpt,
              thresholds: str = typer.Option("youden", "--thresholds", help="per-class thresholds: youden, "
                                                                           "sensitivity or none"),
              target_sensitivity: float = typer.Option(0.9, "--target-sensitivity",
                                                       help="with --thresholds sensitivity"),
              conformal: float = ConformalOpt, conformal_mode: str = ConformalModeOpt) -> None:
    """Fit temperature scaling and per-class thresholds on validation predictions (never on test data); with
    --conformal, a prediction-set rule that apply-calibration uses to give each image a set of classes.

    Example: medvlkit calibrate --predictions runs/val/predictions.csv --out runs/calib
    Then: medvlkit apply-calibration --predictions runs/test/predictions.csv --calibration runs/calib/calibration.json
    """
    from medvlkit.tasks.calibration_task import calibrate_predictions

    out_dir = _out(out, "calibrate")
    metrics = calibrate_predictions(predictions, out_dir, thresholds, target_sensitivity, conformal, conformal_mode)
    console.print(f"validation ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f} after temperature "
                  f"scaling; wrote {out_dir}/calibration.json")


@app.command("apply-calibration")
@guard_out()
def apply_calibration_cmd(predictions: Path = typer.Option(..., "--predictions", help="predictions.csv to calibrate"),
                          calibration: Path = typer.Option(..., "--calibration", help="calibration.json from "
                                                                                      "medvlkit calibrate"),
                          out: Path = OutOpt,
                          bootstrap: int = BootstrapOpt,
                          seed: int = typer.Option(0, "--seed", help="bootstrap seed")) -> None:
    """Apply a calibration fitted on validation data to other (e.g. test) predictions.

    Example: medvlkit apply-calibration --predictions runs/test/predictions.csv
             --calibration runs/calib/calibration.json
    """
    from medvlkit.apps.display import print_conformal, print_metrics
    from medvlkit.tasks.calibration_task import apply_to_predictions

    out_dir = _out(out, "apply-calibration")
    metrics = apply_to_predictions(predictions, calibration, out_dir, bootstrap, seed)
    if metrics:
        console.print(f"ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f}")
        result = json.loads((out_dir / "result.json").read_text())
        print_metrics(result)
        print_conformal(result)
    console.print(f"wrote {out_dir}/predictions.csv and result.json")


@app.command("gate")
@guard_out()
@shared_options()
def gate_cmd(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt, out: Path = OutOpt,
             threshold: float = typer.Option(None, "--threshold", help="P(medical) threshold (default: chosen on "
                                                                        "--val-* images, else the model's)"),
             val_medical: Path = typer.Option(None, "--val-medical", help="validation folder of medical images"),
             val_non_medical: Path = typer.Option(None, "--val-non-medical", help="validation folder of ordinary "
                                                                                  "images"),
             probe: Path = typer.Option(None, "--probe", help="probe.npz from `medvlkit probe` on medical/ and "
                                                              "non-medical/ folders, instead of prompts"),
             stow: bool = StowOpt, run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Label each image medical / non-medical with a score; the threshold is chosen on validation images.

    Example: medvlkit gate --data inbox/ --val-medical val/medical --val-non-medical val/photos --out runs/gate
    """
    from medvlkit.tasks.gate import gate_task

    config = _jsonable(dict(locals()))
    _check_stow(stow, data)
    out_dir = _out(out, "gate")
    res, summary = gate_task(model, data_opts.load(data, split), out_dir, config, threshold, val_medical,
                             val_non_medical, probe_file=probe, run=run)
    console.print(f"{summary['n_medical']} medical, {summary['n_non_medical']} non-medical "
                  f"(threshold {res.threshold:.3f}: {res.threshold_source}); wrote {out_dir}/gate.csv")
    _stow(stow, out_dir, "gate")


@app.command("audit")
@guard_out()
@shared_options()
def audit_cmd(data: Path = DataOpt,
              model: str = typer.Option(None, "--model", "-m", help="a model whose embeddings propose near-duplicates "
                                                                    "and enter the shortcut check (default: none)"),
              split: str = typer.Option(None, "--split", help="comma-separated splits to audit (default: every one "
                                                              "of train, val, test the data has)"),
              group_pattern: str = typer.Option(None, "--group-pattern", help="regex on file names giving the patient "
                                                                              "id (a CSV's patient column is read "
                                                                              "by itself)"),
              near_threshold: float = typer.Option(0.97, "--near-threshold", help="aligned-thumbnail correlation "
                                                                                   "from which a pair is a "
                                                                                   "near-duplicate"),
              augmented: bool = typer.Option(False, "--augmented", help="also search copies made by rotate-and-crop "
                                                                        "(up to 25 degrees) and flip augmentation "
                                                                        "(data made so, e.g. LC25000; slower)"),
              out: Path = OutOpt, bootstrap: int = BootstrapOpt, seed: int = typer.Option(0, "--seed"),
              run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Audit a dataset before any number is reported: exact and near-duplicate images within and across splits,
    label conflicts, patients in two splits, shortcuts (what trivial properties predict), class balance, unreadable
    files. Writes audit.json, a CSV per finding and result.json; `medvlkit report DIR` shows the pairs side by side.

    Example: medvlkit audit --data ../shared/data/brain_tumor_mri --out runs/audit-brain
    """
    from medvlkit.apps.display import print_audit
    from medvlkit.tasks.dataaudit import AuditConfig, run_audit

    out_dir = _out(out, "audit")
    splits = tuple(s.strip() for s in split.split(",") if s.strip()) if split else ()
    cfg = AuditConfig(str(data), splits, model, group_pattern, near_threshold, augmented, bootstrap, seed)
    print_audit(run_audit(cfg, out_dir, data_opts, run), out_dir)


@app.command("index")
@guard_out()
@shared_options()
def index_cmd(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt,
              out: Path = typer.Option(..., "--out", "-o", callback=_out_folder, help="index folder to write"),
              gate: bool = GateOpt, gate_threshold: float = GateThrOpt,
              recursive: bool = typer.Option(False, "--recursive", help="every image file under --data (a folder)"),
              kind: str = typer.Option("flat", "--kind", help="flat (exact), hnsw (graph) or ivf (IVF-PQ, millions of "
                                                               "vectors); approximate kinds report recall@10 vs exact"),
              run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Build a FAISS index of a dataset's image embeddings for similar-case search.

    Example: medvlkit index --data ../shared/data/chest_xray_pneumonia --split train --out runs/cxr-index
    """
    from medvlkit.apps.display import print_gated
    from medvlkit.data import load_dataset
    from medvlkit.tasks.search import index_task

    config = _jsonable(dict(locals()))
    ds = load_dataset(data, split=split, format="folder", recursive=True) if recursive else data_opts.load(data, split)
    result = index_task(run.load_model(model), ds, out, config, run, gate, gate_threshold, kind)
    print_gated(result)
    m, recall = result["metrics"], result["metrics"].get("recall@10_vs_exact")
    console.print(f"indexed {m['n_images']} images ({kind}{f', recall@10 vs exact {recall:.3f}' if recall else ''}) in "
                  f"{m['seconds']:.1f} s -> {out} (result.json lists skipped{' and gated-out' if gate else ''} files)")


@app.command()
@shared_options(embed=False, data=False)
def search(index: Path = typer.Option(..., "--index", help="folder written by medvlkit index"),
           text: str = typer.Option(None, "--text", help="text query"),
           image: Path = typer.Option(None, "--image", help="query image file"),
           k: int = typer.Option(5, "-k", help="results per query"),
           model: str = typer.Option(None, "--model", "-m", help="query model (default: the one the index was "
                                                                 "built with)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON"), run: RunOptions = FILLED) -> None:
    """The k nearest indexed images to a text query or a query image, with cosine scores.

    Example: medvlkit search --index runs/cxr-index --text "right lower lobe consolidation" -k 5
    """
    from medvlkit.apps.display import print_search
    from medvlkit.tasks.search import search_task

    rows = search_task(index, text, image, k, model, run)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    print_search(rows)


@app.command()
@guard_out()
@shared_options(model=False, embed=False)
def caption(data: Path = DataOpt, split: str = SplitOpt,
            out: Path = typer.Option(..., "--out", "-o", callback=_out_file,
                                     help="JSONL file to write ({image, text, label} rows)"),
            captioner: str = typer.Option(None, "--captioner", help="hf:DIR of a BLIP captioning model (default: "
                                                                     "template captions from labels)"),
            per_image: int = typer.Option(1, "--per-image", help="template captions per image (distinct phrasings)"),
            seed: int = typer.Option(0, "--seed"), device: str = DeviceOpt, batch_size: int = BatchOpt,
            on_error: str = OnErrorOpt, quiet: bool = QuietOpt, data_opts: DataOptions = FILLED) -> None:
    """Write image-caption pairs (the JSONL that contrastive fine-tuning reads) for images without captions.

    Example: medvlkit caption --data ../shared/data/chest_xray_pneumonia --split train --out runs/cxr_pairs.jsonl
    """
    from medvlkit.tasks.caption import caption_task

    config = _jsonable(dict(locals()))
    rows, skipped = caption_task(data_opts.load(data, split), out, config, captioner, per_image, seed, device,
                                 batch_size, on_error, progress=not quiet)
    console.print(f"wrote {len(rows)} captions to {out} (and {out.name}.result.json)"
                  + (f" ({len(skipped)} unreadable images skipped)" if skipped else ""))


@app.command()
@guard_out()
def report(runs: list[Path] = typer.Argument(..., help="run folders (each with a result.json)"),
           out: Path = OutOpt) -> None:
    """Merge runs into report.md, report.csv and a self-contained report.html with plots.

    Example: medvlkit report runs/cxr runs/medpix-retrieval --out runs/report
    """
    from medvlkit.apps.report import write_report

    out_dir = _out(out, "report")
    page = write_report(runs, out_dir)
    console.print(f"wrote {page}, report.md and report.csv")


@app.command()
@guard_out()
@shared_options()
def probe(model: str = ModelOpt, data: str = DataOpt, out: Path = OutOpt,
          train_split: str = typer.Option("train", "--train-split"),
          val_split: str = typer.Option(None, "--val-split", help="validation split that picks C (default: 'val' "
                                                                   "when the data has one, else --val-fraction)"),
          test_split: str = typer.Option("test", "--test-split"),
          val_fraction: float = typer.Option(0.1, "--val-fraction", help="part of train held out to pick C when "
                                                                          "there is no val split"),
          group_pattern: str = typer.Option(None, "--group-pattern", help="regex on file names giving the patient "
                                                                           "id, so held-out val is patient-level"),
          shots: int = typer.Option(None, "--shots", help="few-shot: K training examples per class (seeded)"),
          class_weight: str = typer.Option("none", "--class-weight", help="none or balanced"),
          c: float = typer.Option(None, "--C", help="one C instead of the validation sweep"),
          select: str = typer.Option("auroc", "--select", help="validation metric picking C: auroc, accuracy, "
                                                               "balanced_accuracy"),
          load: Path = typer.Option(None, "--load", help="a saved probe.npz: skip training, score --test-split"),
          features: str = typer.Option("embedding", "--features", help="embedding (the shared space) or backbone "
                                                                       "(the image tower's wider pooled features)"),
          bootstrap: int = BootstrapOpt,
          seed: int = typer.Option(0, "--seed", help="seed of few-shot sampling, held-out split and bootstrap"),
          run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Linear probe (logistic regression) on frozen image embeddings; C chosen on validation data only.

    Example: medvlkit probe --data ../shared/data/medmnist/breastmnist.npz --out runs/breast-probe
    Reuse:   medvlkit probe --load runs/breast-probe/probe.npz --data other.npz --test-split test
    """
    from medvlkit.apps.display import print_metrics
    from medvlkit.tasks.probe import ProbeTaskConfig, run_probe_task

    config = _jsonable(dict(locals()))
    out_dir = _out(out, "probe")
    res, lp, info = run_probe_task(_config_from(ProbeTaskConfig, config), out_dir, config, bootstrap, run, data_opts)
    print_metrics(res)
    console.print(f"C = {lp.C_:g} (chosen on {info.get('n_val', 0)} validation images); wrote {out_dir}/result.json, "
                  "predictions.csv and probe.npz")


@app.command()
@guard_out()
@shared_options()
def adapt(model: str = ModelOpt, data: str = DataOpt, out: Path = OutOpt,
          method: str = typer.Option("tip_adapter", "--method", help="tip_adapter (training-free cache), "
                                                                     "tip_adapter_f (its keys fine-tuned), "
                                                                     "clip_adapter (a residual MLP on image "
                                                                     "embeddings), clap (a probe held near the "
                                                                     "zero-shot weights), coop (learned prompt "
                                                                     "context) or clip_lora (LoRA on both towers: "
                                                                     "trains, slow on a CPU); several, "
                                                                     "comma-separated, or all (every method but "
                                                                     "clip_lora): a grid"),
          shots: str = typer.Option("16", "--shots", help="K labelled training images per class (seeded); several, "
                                                          "e.g. 1,2,4,8,16: a grid"),
          prompts: str = typer.Option(None, "--prompts", "-p", help="the prompt set the methods start from "
                                                                    "(default: generic prompts of the class names)"),
          train_split: str = typer.Option("train", "--train-split", help="where the shots come from"),
          test_split: str = typer.Option("test", "--test-split", help="what is scored"),
          load: Path = typer.Option(None, "--load", help="a saved adapter.npz: skip fitting, score --test-split"),
          steps: int = typer.Option(0, "--steps", min=0, help="clip_lora's training steps (0: the paper's 500 x "
                                                               "shots)"),
          bootstrap: int = BootstrapOpt,
          seed: int = typer.Option(0, "--seed", help="seed of the shots, their validation part and training"),
          seeds: str = typer.Option(None, "--seeds", help="a grid over these seeds, e.g. 0,1,2 (mean and SD)"),
          run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Few-shot adaptation from K labelled images per class (Tip-Adapter, Tip-Adapter-F, CLIP-Adapter, CLAP, CoOp on
    frozen embeddings; CLIP-LoRA trains LoRA in both towers), starting from the prompt set's zero-shot classifier;
    hyper-parameters from the shots only, scored on test. Several methods, shot counts or --seeds run a grid (data
    embedded once; rerun with --overwrite to resume: cells computed from the same data and settings are kept).

    Example: medvlkit adapt --data ../shared/data/chest_xray_pneumonia --prompts pneumonia --method clap --shots 8
    Grid:    medvlkit adapt --data DIR --prompts pneumonia --method all --shots 1,2,4,8,16 --seeds 0,1,2
    CLIP-LoRA: medvlkit adapt --data DIR --prompts pneumonia --method clip_lora --shots 4 (--steps N: shorter)
    """
    from medvlkit.apps.display import print_metrics
    from medvlkit.engine.fewshot import METHODS
    from medvlkit.tasks.adapt import AdaptConfig, run_adapt_grid, run_adapt_task

    config = _jsonable(dict(locals()))
    methods = list(METHODS) if method == "all" else [m.strip() for m in method.split(",") if m.strip()]
    shot_list, seed_list = _ints(shots, "--shots"), _ints(seeds, "--seeds") if seeds else [seed]
    out_dir = _out(out, "adapt")
    cfg = _config_from(AdaptConfig, config, method=methods[0] if methods else "", shots=shot_list[0], seed=seed_list[0])
    if steps and "clip_lora" not in methods:
        raise MedvlkitError("--steps sets clip_lora's training length; the other methods have fixed recipes")
    if len(methods) > 1 or len(shot_list) > 1 or seeds:
        if load:
            raise MedvlkitError("--load scores one saved adapter; leave out the grid options (lists, --seeds)")
        grid = run_adapt_grid(cfg, methods, shot_list, seed_list, out_dir, config, bootstrap, run, data_opts,
                              progress=run.progress)
        print(grid["markdown"])  # plain: a Markdown table must not be wrapped
        console.print(f"wrote {out_dir}/grid.csv, summary.csv, summary.md, fewshot.png, result.json and one folder per "
                      "cell")
        return
    res, adapter = run_adapt_task(cfg, out_dir, config, bootstrap, run, data_opts)
    print_metrics(res)
    console.print(f"{adapter.method}: {adapter.hyper.get('source', '')}; wrote {out_dir}/result.json, predictions.csv "
                  "and adapter.npz")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MedvlkitError(f"{flag} {text}: whole numbers, comma-separated (e.g. 1,2,4,8,16)") from None
    if not values:
        raise MedvlkitError(f"{flag}: give at least one number")
    return values


@app.command()
@guard_out()
def evaluate(predictions: Path = typer.Option(..., "--predictions", help="CSV with file + prob_<class> columns"),
             labels: Path = typer.Option(None, "--labels", help="CSV with file + label (class name) or one 0/1 column "
                                                                "per class; default: the predictions' own "
                                                                "true_<class> columns"),
             out: Path = OutOpt, bootstrap: int = BootstrapOpt,
             seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
             val_predictions: Path = typer.Option(None, "--val-predictions",
                                                  help="labelled VALIDATION predictions.csv (same classes, other "
                                                       "images): operating-point thresholds are chosen on it"),
             specificity: str = typer.Option("0.9,0.95", "--specificity",
                                             help="report sensitivity at these specificities (comma-separated)"),
             sensitivity: str = typer.Option("0.9,0.95", "--sensitivity",
                                             help="report specificity at these sensitivities (comma-separated)"),
             prevalence: float = typer.Option(None, "--prevalence", help="also PPV/NPV at this prevalence"),
             positive: str = typer.Option(None, "--positive", help="two-class data: the class whose decision curve "
                                                                   "is drawn (default: the second)"),
             subgroups: str = SubgroupsOpt, age_bands: str = AgeBandsOpt, min_subgroup: int = MinSubgroupOpt,
             subgroup_metric: str = SubgroupMetricOpt, metadata: Path = MetadataOpt,
             conformal: float = ConformalOpt, conformal_mode: str = ConformalModeOpt) -> None:
    """Score predictions against labels (joined on the 'file' column), or a medvlkit predictions.csv against its own
    truth (reproducing its run's metrics exactly). With --val-predictions: sensitivity at fixed specificity (and the
    reverse) per class, the threshold chosen on validation and reported on these predictions.

    Example: medvlkit evaluate --predictions runs/test/predictions.csv --val-predictions runs/val/predictions.csv
    """
    from medvlkit.apps.display import print_conformal, print_metrics, print_operating_points, print_subgroups
    from medvlkit.tasks.evaluate import ClinicalOptions, evaluate_task

    clinical = ClinicalOptions(val_predictions, _levels(specificity, "--specificity"),
                               _levels(sensitivity, "--sensitivity"), prevalence, positive, conformal, conformal_mode)
    out_dir = _out(out, "evaluate")
    groups = _subgroups(subgroups, age_bands, min_subgroup, subgroup_metric, metadata)
    result, unmatched = evaluate_task(predictions, labels, out_dir, bootstrap, seed, clinical, groups)
    print_metrics(result)
    print_operating_points(result)
    print_conformal(result)
    print_subgroups(result)
    if unmatched:
        err_console.print(f"warning: {unmatched} predictions had no label and were left out")
    console.print(f"wrote {out_dir}/result.json")


@app.command()
@guard_out("resume")
def pretrain(data_root: Path = typer.Option(None, "--data-root", help="medvlkit data folder (default $MEDVLKIT_DATA "
                                                                      "or ../shared/data)"),
             out: Path = OutOpt, epochs: int = typer.Option(60, "--epochs"),
             patience: int = typer.Option(12, "--patience", help="stop after this many epochs without a better val "
                                                                 "score"),
             batch_size: int = typer.Option(256, "--batch-size", min=1), lr: float = typer.Option(1e-3, "--lr"),
             weight_decay: float = typer.Option(0.05, "--weight-decay"),
             cap_per_source: int = typer.Option(1500, "--cap-per-source", help="images per source per epoch"),
             embed_dim: int = typer.Option(256, "--embed-dim"), hidden_dim: int = typer.Option(1024, "--hidden-dim"),
             dropout: float = typer.Option(0.1, "--dropout"), seed: int = typer.Option(0, "--seed"),
             sources: str = typer.Option(None, "--sources",
                                         help="comma-separated: cxr,pneumoniamnist,medpix,retina,photo"),
             workers: int = WorkersOpt,
             feature_batch_size: int = typer.Option(64, "--feature-batch-size", min=1, help="images per forward "
                                                                                           "pass of the frozen towers"),
             resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
             quiet: bool = QuietOpt) -> None:
    """Train the projection heads of the embedded `lite` model on real image-caption pairs (train splits only).

    Example: medvlkit pretrain --data-root ../shared/data --out runs/pretrain-lite
    Use the result with --model lite:runs/pretrain-lite/best
    """
    import os

    from medvlkit.apps.display import print_pretrained
    from medvlkit.tasks.pretrain.train import PretrainConfig
    from medvlkit.tasks.pretrain.train import pretrain as run_pretrain

    root = data_root or Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    cfg = _config_from(PretrainConfig, locals(), data_root=str(root), out_dir=str(_out(out, "pretrain")),
                       sources=tuple(s.strip() for s in sources.split(",")) if sources else None)
    print_pretrained(run_pretrain(cfg, resume=resume, progress=not quiet), cfg.out_dir)


_FT_MODE = typer.Option("contrastive", "--mode", help="contrastive (image-caption InfoNCE; captions from labels when "
                                                     "the data has none), supervised (CE/BCE head) or prompt_ce "
                                                     "(CLIP-LoRA: cross-entropy over the --prompts classes, both "
                                                     "towers training)")
_FT_VAL_SPLIT = typer.Option(None, "--val-split", help="split choosing the best epoch (default 'val' when the data "
                                                       "has one, else a held-out --val-fraction of train; 'holdout' "
                                                       "forces that; 'none': no validation, the last epoch kept)")
_FT_AMP = typer.Option("auto", "--amp", help="mixed-precision training (autocast; weights stay fp32): auto "
                                             "(bf16/fp16 on CUDA, off on CPU), fp32 (off), bf16, fp16")


@app.command()
@guard_out("resume")
@shared_options(model=False, embed=False)
def finetune(model: str = ModelOpt, data: Path = DataOpt, out: Path = OutOpt,
             mode: str = _FT_MODE,
             prompts: str = typer.Option(None, "--prompts", "-p", help="prompt_ce: the prompt set it trains over "
                                                                       "('classes': generic prompts of the class "
                                                                       "names; default: the training phrasings)"),
             shots: int = typer.Option(0, "--shots", help="train on K seeded images per class (0: all)"),
             lora: str = typer.Option(None, "--lora", help="LoRA instead of full fine-tuning: 'default' or "
                                                           "r=4,alpha=16,dropout=0.1,targets=q_proj,v_proj,fc1,fc2"),
             freeze: str = typer.Option("none", "--freeze", help="keep a tower fixed: vision, text or none"),
             train_split: str = typer.Option("train", "--train-split"),
             val_split: str = _FT_VAL_SPLIT,
             test_split: str = typer.Option("test", "--test-split", help="split the best model is scored on "
                                                                       "('none' to skip)"),
             val_fraction: float = typer.Option(0.1, "--val-fraction", help="part of train held out as validation "
                                                                         "when there is no val split"),
             group_pattern: str = typer.Option(None, "--group-pattern", help="regex on file names giving the "
                                                                             "patient id (patient-level held-out val)"),
             epochs: int = typer.Option(5, "--epochs"),
             max_steps: int = typer.Option(0, "--max-steps", help="stop after this many steps (0: --epochs decide)"),
             patience: int = typer.Option(3, "--patience", help="epochs without a better val score before stopping"),
             batch_size: int = typer.Option(32, "--batch-size", min=1, help="global batch (over all torchrun ranks)"),
             grad_cache: int = typer.Option(0, "--grad-cache", help="GradCache chunk size: a large contrastive "
                                                                   "batch in small memory (0: off)"),
             lr: float = typer.Option(None, "--lr", help="tower/adapter learning rate (default 2e-4 LoRA, 1e-5 "
                                                         "full)"),
             head_lr: float = typer.Option(1e-3, "--head-lr", help="classifier head and temperature learning rate"),
             weight_decay: float = typer.Option(0.01, "--weight-decay"),
             optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (momentum 0.9)"),
             warmup: int = typer.Option(50, "--warmup", help="linear warm-up steps"),
             class_weight: str = typer.Option("balanced", "--class-weight", help="balanced (BCE pos_weight, "
                                                                                 "weighted CE) or none"),
             amp: str = _FT_AMP,
             precision: str = typer.Option(None, "--precision", hidden=True),  # renamed --amp: answered below
             save_every: int = typer.Option(100, "--save-every", help="steps between checkpoints"),
             max_val: int = typer.Option(0, "--max-val", help="validation images per evaluation (0: all)"),
             device: str = typer.Option("auto", "--device", help="cpu, cuda, mps or auto"),
             workers: int = WorkersOpt, seed: int = typer.Option(0, "--seed"),
             resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
             load: Path = typer.Option(None, "--load", help="a run's best/ folder: skip training, score "
                                                            "--test-split"),
             bootstrap: int = BootstrapOpt, quiet: bool = QuietOpt, data_opts: DataOptions = FILLED) -> None:
    """Fine-tune a model: contrastive (full, LoRA, one tower frozen; GradCache) or supervised (CE/BCE head).

    Example: medvlkit finetune --data ../shared/data/medpix2 --lora default --epochs 3 --out runs/medpix-lora
    Scale:   torchrun --nproc-per-node 2 -m medvlkit finetune --data ... (DDP; gloo on CPU, NCCL on GPU)
    Use the model: --model ft:runs/medpix-lora/best with any other command.
    """
    from medvlkit.apps.display import print_finetuned
    from medvlkit.tasks.finetune.config import FinetuneConfig
    from medvlkit.tasks.finetune.task import run_finetune_task

    if precision is not None:
        raise MedvlkitError(f"finetune's --precision is now --amp (autocast while training, weights kept fp32): "
                            f"pass --amp {precision}; --precision names the weights' dtype of inference verbs")
    config, out_dir = _jsonable(dict(locals())), _out(out, "finetune")
    cfg = _config_from(FinetuneConfig, config, format=data_opts.format, out_dir=str(out_dir),
                       dataset_options=data_opts.options())
    outcome = run_finetune_task(cfg, config, test_split, load, bootstrap, resume, progress=not quiet)
    if outcome.is_main:
        print_finetuned(outcome, out_dir)


@app.command()
def benchmark(model: str = ModelOpt, data: Path = DataOpt, fmt: str = FormatOpt, out: Path = OutOpt,
              prompts: str = typer.Option(None, "--prompts", help="prompt set for the zero-shot row (default: the "
                                                                  "phrasings fine-tuning trains on)"),
              lora: str = typer.Option("default", "--lora", help="LoRA settings of the fine-tuning row"),
              epochs: int = typer.Option(3, "--epochs", help="fine-tuning epochs"),
              max_steps: int = typer.Option(0, "--max-steps", help="fine-tuning steps (0: --epochs decide)"),
              batch_size: int = typer.Option(32, "--batch-size", min=1, help="fine-tuning batch"),
              lr: float = typer.Option(None, "--lr", help="fine-tuning learning rate (default 2e-4)"),
              grad_cache: int = typer.Option(0, "--grad-cache", help="GradCache chunk size (0: off)"),
              val_split: str = typer.Option(None, "--val-split", help="validation split; 'holdout' holds out "
                                                                      "--val-fraction of train"),
              val_fraction: float = typer.Option(0.1, "--val-fraction"),
              group_pattern: str = typer.Option(None, "--group-pattern", help="patient id regex for held-out val"),
              exclude: str = ExcludeOpt, allow_seen: bool = AllowSeenOpt,
              training_manifest: str = TrainingManifestOpt,
              rows: str = typer.Option(",".join(("zeroshot", "probe_frozen", "lora_contrastive", "probe_lora")),
                                       "--rows", help="rows to run; add supervised_lora for a LoRA tower + "
                                                      "classification head trained end to end"),
              device: str = typer.Option("auto", "--device", help="cpu, cuda, mps or auto"),
              workers: int = WorkersOpt, seed: int = typer.Option(0, "--seed"),
              bootstrap: int = BootstrapOpt,
              quiet: bool = QuietOpt) -> None:
    """The seed's comparison table: zero-shot, linear probe (frozen), LoRA contrastive, probe on the LoRA tower.

    Example: medvlkit benchmark --data ../shared/data/medmnist/breastmnist.npz --out runs/bench-breast
    Train splits train, validation chooses, the test split is scored; rerun the same command to continue.
    """
    from medvlkit.tasks.benchmark import BenchmarkConfig, run_benchmark

    cfg = _config_from(BenchmarkConfig, locals(), data=str(data), out_dir=str(_out(out, "benchmark")), format=fmt,
                       rows=tuple(r.strip() for r in rows.split(",") if r.strip()))
    table = run_benchmark(cfg, progress=not quiet)
    print(table["markdown"])  # plain: a Markdown table must not be wrapped
    console.print(f"wrote {cfg.out_dir}/table.md, table.json and one folder per row")


@app.command("eval")
@guard_out("skip_existing")
@shared_options()
def eval_cmd(models: list[str] = typer.Option(..., "--model", "-m", help="a model spec; repeat for several"),
             datasets: list[Path] = typer.Option(..., "--data", "-d", help="a dataset; repeat for several"),
             task: str = typer.Option("auto", "--task", help="auto (labels: zeroshot + probe; captions: retrieval) or "
                                                             "a comma-separated subset of zeroshot,probe,retrieval,"
                                                             "fewshot (the adapt grid: never part of auto)"),
             split: str = typer.Option("test", "--split", help="the split every run is scored on"),
             prompts: str = typer.Option(None, "--prompts", help="prompt set for every labelled dataset (default: "
                                                                 "the shipped set matching its classes)"),
             skip_existing: bool = typer.Option(False, "--skip-existing", help="keep runs already done with the "
                                                                               "same settings"),
             out: Path = OutOpt, bootstrap: int = BootstrapOpt,
             seed: int = typer.Option(0, "--seed", help="bootstrap and probe seed"),
             group_pattern: str = typer.Option(None, "--group-pattern", help="regex on file names giving the "
                                                                             "patient id, for the probe's held-out "
                                                                             "validation where a dataset has no val"),
             val_split: str = typer.Option(None, "--val-split", help="zero-shot cells also report operating points "
                                                                     "with thresholds chosen on this split (e.g. val)"),
             conformal: float = ConformalOpt, conformal_mode: str = ConformalModeOpt,
             subgroups: str = SubgroupsOpt, age_bands: str = AgeBandsOpt, min_subgroup: int = MinSubgroupOpt,
             subgroup_metric: str = SubgroupMetricOpt, metadata: Path = MetadataOpt,
             prompt_sensitivity: bool = PromptSensitivityOpt,
             fewshot_methods: str = typer.Option(None, "--fewshot-methods", help="fewshot cells: the adapt methods "
                                                                                 "(comma-separated; default all)"),
             shots: str = typer.Option(None, "--shots", help="fewshot cells: K labelled images per class (default "
                                                             "1,2,4,8,16)"),
             seeds: str = typer.Option(None, "--seeds", help="fewshot cells: the seeds of the shots (default 0,1,2)"),
             run: RunOptions = FILLED, data_opts: DataOptions = FILLED) -> None:
    """Evaluate every model on every dataset (CLIP_benchmark-style sweep), then write one report over all runs.

    Example: medvlkit eval -m lite -m hf:/models/clip -d ../shared/data/medmnist/breastmnist.npz
             -d ../shared/data/medpix2 --skip-existing --out runs/sweep
    Few-shot: medvlkit eval -m lite -d DIR -d DIR2 --task fewshot --shots 1,2,4,8,16 --seeds 0,1,2
    """
    from medvlkit.apps.display import print_cells
    from medvlkit.tasks.sweep import FEWSHOT_SEEDS, FEWSHOT_SHOTS, SweepConfig, run_sweep

    tasks = tuple(t.strip() for t in task.split(",") if t.strip())
    if (fewshot_methods or shots or seeds) and "fewshot" not in tasks:
        raise MedvlkitError("--fewshot-methods, --shots and --seeds set the fewshot cells: add fewshot to --task")
    methods = () if fewshot_methods in (None, "all") else tuple(m.strip() for m in fewshot_methods.split(",")
                                                                if m.strip())
    if fewshot_methods not in (None, "all") and not methods:
        raise MedvlkitError(f"--fewshot-methods {fewshot_methods!r}: name at least one method, or all")
    cfg = SweepConfig([str(m) for m in models], [str(d) for d in datasets], str(_out(out, "eval")),
                      tasks, split, prompts, bootstrap, seed,
                      skip_existing, group_pattern, val_split, conformal, conformal_mode, subgroups,
                      sorted(_levels(age_bands, "--age-bands", upper=None)) if age_bands else [], min_subgroup,
                      str(metadata) if metadata else None, prompt_sensitivity, subgroup_metric, methods,
                      tuple(_ints(shots, "--shots")) if shots else FEWSHOT_SHOTS,
                      tuple(_ints(seeds, "--seeds")) if seeds else FEWSHOT_SEEDS)
    cells = run_sweep(cfg, run, data_opts)
    print_cells(cells)
    if finished := [Path(c.out) for c in cells if c.status in ("done", "skipped")]:
        from medvlkit.apps.report import write_report

        write_report(finished, Path(cfg.out_dir) / "report")
    console.print(f"wrote {cfg.out_dir}/sweep.json and {cfg.out_dir}/report/report.html")
    if failed := [c for c in cells if c.status == "failed"]:
        raise MedvlkitError(f"{len(failed)} of {len(cells)} runs failed (listed above and in sweep.json)")


@app.command()
@guard_out()
@shared_options(data=False)
def demo(images: Path = typer.Option(None, "--images", help="also run on your own images (a folder)"),
         model: str = ModelOpt, out: Path = OutOpt, run: RunOptions = FILLED) -> None:
    """Run the embedded model on real images bundled in scikit-image and pydicom (and --images DIR):
    medical-image gate, imaging modality, and pneumonia for chest X-rays.

    Example: medvlkit demo --images ../shared/data/chest_xray_pneumonia/test/PNEUMONIA
    """
    from medvlkit.apps.display import print_demo
    from medvlkit.tasks.demo import demo_task

    config, out_dir = _jsonable(dict(locals())), _out(out, "demo")
    print_demo(*demo_task(_load_with_scope(run, model), out_dir, config, images, progress=run.progress))
    console.print(f"wrote {out_dir}/result.json and predictions.csv")


def _subgroups(columns: str | None, bands: str | None, min_size: int, metric: str, metadata: Path | None):
    """The subgroup options of a verb (None when --subgroups is not given)."""
    from medvlkit.tasks.evaluate import SubgroupOptions

    if not columns:
        if bands or metadata:
            raise MedvlkitError("--age-bands and --metadata go with --subgroups COLUMN[,COLUMN]")
        return None
    return SubgroupOptions([c.strip() for c in columns.split(",") if c.strip()],
                           sorted(_levels(bands, "--age-bands", upper=None)) if bands else [], min_size, metric,
                           metadata)


def _levels(text: str, flag: str, upper: float | None = 1.0) -> tuple[float, ...]:
    """Comma-separated rates in (0, 1] ("" for none); any numbers when ``upper`` is None."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MedvlkitError(f"{flag} {text}: give comma-separated numbers such as 0.9,0.95") from None
    if upper is not None and any(not 0 < v <= upper for v in values):
        raise MedvlkitError(f"{flag} {text}: each rate must be in (0, 1]")
    return values


def _load_with_scope(run: RunOptions, spec: str):
    """The model, and its card's scope printed once (stderr) where its answers will be shown: it travels with the
    weights (``lite``, ``lite`` exported to ``onnx:``), not with the spec typed."""
    model = run.load_model(spec)
    if model.scope:
        err_console.print(f"note: {model.scope}")
    return model


def _jsonable(config: dict) -> dict:
    """The command's options (its locals minus imported helpers; the shared option objects' fields), JSON-ready."""
    flat: dict = {}
    for k, v in config.items():
        if isinstance(v, (RunOptions, DataOptions)):
            flat |= v.to_dict()
        elif v is None or isinstance(v, (str, int, float, bool, Path)):
            flat[k] = str(v) if isinstance(v, Path) else v
    return flat


def _quiet_transformers() -> None:
    """The CLI's own output stays readable: no weight-loading bars or advisory warnings from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command()
@guard_out()
@shared_options()
def explain(model: str = ModelOpt, data: str = DataOpt, split: str = SplitOpt,
            prompts: str = typer.Option(None, "--prompts", "-p", help="shipped prompt set name or a .json file"),
            classes: str = typer.Option(None, "--classes", help="comma-separated class names (instead of --prompts)"),
            text: list[str] = typer.Option(None, "--text", help="a free text to locate (repeat for several)"),
            mode: str = typer.Option(None, "--mode", help="softmax or pos_neg (default: the prompt set's)"),
            method: str = typer.Option(None, "--method", help="gradcam (CNN towers) or rollout (CLIP ViTs); "
                                                              "default: the tower's"),
            limit: int = typer.Option(None, "--limit", min=1, help="explain the first N images"),
            target: str = typer.Option("log_prob", "--target", help="explain each class's log_prob against the other "
                                                                     "classes (softmax sets), or its similarity"),
            out: Path = OutOpt, stow: bool = StowOpt, run: RunOptions = FILLED,
            data_opts: DataOptions = FILLED) -> None:
    """Heatmaps of where the model sees each class prompt (or --text): Grad-CAM for CNN towers, gradient-weighted
    attention rollout for ViTs; for an image-only model (rad-dino), no prompts: where its embedding attends.
    Overlays (PNG) and raw maps (.npy) per image, listed in result.json.

    Example: medvlkit explain --data ../shared/data/chest_xray_pneumonia --split test --prompts pneumonia --limit 20
    """
    from medvlkit.data.prompts import prompt_set_from_classes, resolve_prompt_set
    from medvlkit.tasks.explain import explain_task

    config = _jsonable(dict(locals()))
    if text and (prompts or classes):
        raise MedvlkitError("pass --text, or --prompts / --classes, not both")
    _check_stow(stow, data)
    ds = data_opts.load(data, split)
    loaded = _load_with_scope(run, model)
    ps = None if not (loaded.has_text or text or prompts or classes) else \
        prompt_set_from_classes(list(text), free_text=True) if text else resolve_prompt_set(prompts, classes, mode)
    out_dir = _out(out, "explain")
    result = explain_task(loaded, ds, ps, out_dir, config, limit, method, mode, target, run)
    console.print(f"{result['metrics']['n_images']} images explained by {result['method']} "
                  f"({', '.join(result['classes'])}); overlays in {out_dir}/overlays, maps in {out_dir}/maps")
    _stow(stow, out_dir, "explain")


@app.command()
def export(model: str = ModelOpt, out: Path = typer.Option(..., "--out", "-o", callback=_out_folder,
                                                          help="new folder for the graphs, tokenizer and manifest"),
           fmt: str = typer.Option("onnx", "--format", help="onnx"),
           opset: int = typer.Option(17, "--opset", min=11, help="ONNX opset"),
           quantize: str = typer.Option(None, "--quantize", help="int8: ONNX Runtime dynamic quantisation"),
           verify_data: Path = typer.Option(None, "--verify-data", help="images to verify on (default: the demo's "
                                                                        "bundled images)"),
           tokenizer: str = TokenizerOpt) -> None:
    """The image and text towers as ONNX graphs (dynamic batch) + tokenizer + manifest, verified against PyTorch
    (max abs difference of unit embeddings <= 1e-4, or the export fails). Load it with --model onnx:DIR.

    Example: medvlkit export --model lite --format onnx --out runs/lite-onnx
    """
    from medvlkit.apps.display import print_export
    from medvlkit.tasks.export import export_task

    print_export(export_task(model, out, fmt, opset, quantize, verify_data, RunOptions(tokenizer=tokenizer)), out)


@app.command()
@shared_options(embed=False, data=False)
def serve(model: str = typer.Option(None, "--model", "-m", help="model spec (default: the index's model, or lite)"),
          index: Path = typer.Option(None, "--index", help="folder written by medvlkit index (same model): search "
                                                           "and similar cases"),
          prompts: list[str] = typer.Option(None, "--prompts", help="prompt set name or JSON file (repeat; default: "
                                                                     "every shipped set but the gate's)"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to bind (beyond loopback needs --token)"),
          port: int = typer.Option(8000, "--port", min=0, max=65535),
          token: str = typer.Option(None, "--token", envvar=SERVE_TOKEN_ENV,
                                    help=f"bearer token every data endpoint requires (or ${SERVE_TOKEN_ENV})"),
          max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", help="largest request body"),
          max_batch: int = typer.Option(32, "--max-batch", min=1, help="images per forward pass across requests"),
          max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="how long a lone image waits for company"),
          gate_threshold: float = GateThrOpt,
          pacs: str = typer.Option(None, "--pacs", help="a DICOMweb root (http://host:port/dicom-web): POST "
                                                        "/zeroshot then reads a study_uid / series_uid from it "
                                                        "(credentials: MEDVLKIT_DICOMWEB_* in the environment)"),
          run: RunOptions = FILLED) -> None:
    """An HTTP API (OpenAPI docs at /docs) and a web page at / for zero-shot reading, the medical-image gate,
    embeddings and similar-case search. Needs the serve extra (scripts/setup.sh installs it).

    Example: medvlkit serve --index runs/cxr-index --prompts pneumonia --port 8000   (then open http://127.0.0.1:8000)
    """
    from medvlkit.apps.serve import serve_task

    serve_task(host, port, model_spec=model, index=index, prompts=prompts or None, token=token,
               max_upload_mb=max_upload_mb, max_batch=max_batch, max_wait_ms=max_wait_ms,
               gate_threshold=gate_threshold, run=run, pacs=pacs)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one line and exits 2 (a traceback only with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--offline" not in argv:
        return _main(argv)
    previous = os.environ.get("MEDVLKIT_OFFLINE")
    os.environ["MEDVLKIT_OFFLINE"] = "1"  # any command: models from the local caches only (as HF_HUB_OFFLINE=1)
    try:
        return _main([a for a in argv if a != "--offline"])
    finally:  # an in-process caller (a test, a notebook) gets its environment back
        if previous is None:
            os.environ.pop("MEDVLKIT_OFFLINE", None)
        else:
            os.environ["MEDVLKIT_OFFLINE"] = previous


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        _quiet_transformers()
        for handler in logging.getLogger().handlers:  # a library's logged traceback (pydicom's) prints as one line
            handler.addFilter(_one_line_records)
    try:
        from medvlkit.apps.config_file import expand_config
        from medvlkit.apps.plugins import load_plugins

        load_plugins()  # extensions the user named ($MEDVLKIT_PLUGINS, entry points), before parsing
        args = expand_config([a for a in argv if a != "--debug"], typer.main.get_command(app))
        app(args=args, prog_name="medvlkit", standalone_mode=True)  # usage errors print and exit 2 themselves
    except (MedvlkitError, OSError) as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)  # one unwrapped line, whatever the terminal width
        return 2
    except KeyboardInterrupt:  # work that keeps nothing to resume from (a run with a cache or checkpoint says so)
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as ex:
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0


def _one_line_records(record: logging.LogRecord) -> bool:
    """A logging filter: records keep their message but lose any traceback (``--debug`` shows them)."""
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _one_line(err: MedvlkitError | OSError) -> str:
    """A library error as it is; an OS error (a folder that cannot be written, a full disk...) as the file and the
    reason, without a traceback."""
    if isinstance(err, MedvlkitError):
        return str(err)
    return f"{err.filename or ''}: {err.strerror or err} (check the path and its permissions; --debug shows where)"


if __name__ == "__main__":
    sys.exit(main())
