"""Medical vs non-medical image gate (zero-shot prompts), usable in front of other commands.

The decision threshold is, in order: the one the caller gives, one chosen on validation images the caller
gives (balanced accuracy), or the model's own validated threshold (``lite`` ships one). A model without one gets
no made-up default: the caller is asked for a threshold or validation folders.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import PromptSet, load_prompt_set
from medvlkit.engine.answer import ClassVectors, answer, class_vectors
from medvlkit.engine.features import ImageEmbeddings, embed_images
from medvlkit.engine.identity import dataset_identity, identity_record, model_identity
from medvlkit.engine.options import RunOptions
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase

GATE_PROMPTS = "medical_gate"


def default_gate_threshold(model: ModelBase) -> float:
    """The model's own validated threshold (``lite`` ships one).

    Raises:
        MedvlkitError: the model has none; a threshold validated for another model would be meaningless.
    """
    if model.validated_gate_threshold is None:
        raise MedvlkitError(f"model '{model.name}' has no validated medical-image gate threshold: pass "
                            "--gate-threshold P, or choose one on your validation images with `medvlkit gate "
                            "--val-medical DIR --val-non-medical DIR` (or a probe with --probe)")
    return float(model.validated_gate_threshold)


def gate_vectors(model: ModelBase, prompts: PromptSet | None = None, cache: bool = False,
                 cache_dir: str | None = None) -> ClassVectors:
    """The gate's class embeddings (the ``medical_gate`` prompt set unless ``prompts``), to reuse across calls."""
    return class_vectors(model, prompts or load_prompt_set(GATE_PROMPTS), "softmax", cache, cache_dir)


def medical_probability(model: ModelBase, image_emb: np.ndarray, prompts: PromptSet | None = None,
                        vectors: ClassVectors | None = None) -> np.ndarray:
    """P(medical image) per row of (N, D) image embeddings, from the ``medical_gate`` prompt set (or ``vectors``
    from :func:`gate_vectors`). Returns (N,)."""
    vectors = vectors or gate_vectors(model, prompts)
    ans = answer(image_emb, vectors, model.logit_scale)
    return ans.probs[:, ans.classnames.index("medical")]


def balanced_threshold(p_medical: np.ndarray, is_medical: np.ndarray) -> float:
    """The threshold with the best balanced accuracy; the middle of the optimal range, not its edge."""
    is_medical = np.asarray(is_medical, bool)
    candidates = np.unique(np.r_[p_medical, 0.5])
    balanced = np.array([0.5 * (np.mean(p_medical[is_medical] >= t) + np.mean(p_medical[~is_medical] < t))
                         for t in candidates])
    optimal = candidates[balanced == balanced.max()]
    mid = len(optimal) // 2
    return float(optimal[mid]) if len(optimal) % 2 else float(optimal[mid - 1:mid + 1].mean())


@dataclass
class GateResult:
    """Per-image gate scores for the readable items of a dataset."""

    embeddings: ImageEmbeddings
    p_medical: np.ndarray  # (N,)
    threshold: float
    threshold_source: str

    @property
    def items(self) -> list[str]:
        return self.embeddings.items

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.embeddings.skipped

    @property
    def accepted(self) -> np.ndarray:
        return self.p_medical >= self.threshold


def threshold_from_validation(model: ModelBase, medical: ImageDataset, non_medical: ImageDataset,
                              **embed_options) -> float:
    """Balanced-accuracy threshold on the caller's validation images (medical and non-medical folders)."""
    p_med = medical_probability(model, embed_images(model, medical, **embed_options).vectors)
    p_non = medical_probability(model, embed_images(model, non_medical, **embed_options).vectors)
    return balanced_threshold(np.r_[p_med, p_non], np.r_[np.ones(len(p_med)), np.zeros(len(p_non))])


def probe_medical_probability(probe, image_emb: np.ndarray) -> np.ndarray:
    """P(medical) from a probe trained with ``medvlkit probe`` on folders named ``medical`` / ``non-medical``."""
    names = [n.strip().lower().replace("_", "-") for n in probe.classnames_]
    if "medical" not in names:
        raise MedvlkitError(f"the gate probe needs a class named 'medical' (its classes: {probe.classnames_}); "
                            "train it on folders medical/ and non-medical/")
    return probe.predict_proba(image_emb)[:, names.index("medical")]


def run_gate(model: ModelBase, dataset: ImageDataset, threshold: float | None = None,
             threshold_source: str = "given", probe=None, **embed_options) -> GateResult:
    """Score every image of ``dataset`` (zero-shot prompts, or ``probe``); ``threshold`` None means the model's
    default (0.5 with a probe)."""
    emb = embed_images(model, dataset, **embed_options)
    if threshold is None:
        threshold, threshold_source = ((0.5, "0.5 (probe)") if probe is not None else
                                       (default_gate_threshold(model), f"validated for {model.name}"))
    p_med = probe_medical_probability(probe, emb.vectors) if probe is not None else medical_probability(
        model, emb.vectors)
    return GateResult(emb, p_med, float(threshold), threshold_source)


def filter_dataset(model: ModelBase, dataset: ImageDataset, threshold: float | None = None, probe=None,
                   **embed_options) -> tuple[ImageDataset, list[dict], ImageEmbeddings]:
    """The dataset restricted to images the gate accepts, the rejected ones with their scores, and the kept
    images' embeddings (in kept-dataset order), so the next task need not embed them again."""
    res = run_gate(model, dataset, threshold, probe=probe, **embed_options)
    emb, accepted = res.embeddings, res.accepted
    kept = dataset.subset(emb.indices[accepted])
    rejected = [{"file": it, "p_medical": float(p), "threshold": res.threshold}
                for it, p, ok in zip(emb.items, res.p_medical, accepted) if not ok]
    kept_emb = ImageEmbeddings(vectors=emb.vectors[accepted], indices=np.arange(int(accepted.sum())),
                               items=list(kept.items), skipped=emb.skipped, n_cached=emb.n_cached)
    return kept, rejected, kept_emb


def gate_before(model: ModelBase, dataset: ImageDataset, gate: bool, threshold: float | None = None,
                **embed_options) -> tuple[ImageDataset, dict, ImageEmbeddings | None]:
    """``--gate`` in front of another task: the images the gate accepts, ``{"gated_out": [rejected...]}`` for the
    task's ``result.json`` and the kept embeddings; the dataset unchanged, {} and None when ``gate`` is off.

    Raises:
        MedvlkitError: the gate rejected every image.
    """
    if not gate:
        return dataset, {}, None
    kept, rejected, emb = filter_dataset(model, dataset, threshold, **embed_options)
    if len(kept) == 0:
        raise MedvlkitError(f"the gate rejected all {len(dataset)} images of {dataset.name} (threshold "
                            f"{rejected[0]['threshold']:.3f}); check the data or lower --gate-threshold")
    return kept, {"gated_out": rejected}, emb


def save_gate(res: GateResult, out_dir: Path, model: ModelBase, dataset: ImageDataset, config: dict) -> dict:
    """Write gate.csv (file, p_medical, verdict) and result.json (counts, threshold, rejected files)."""
    from medvlkit.engine.results import provenance, write_result

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "gate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "p_medical", "verdict"])
        for it, p, ok in zip(res.items, res.p_medical, res.accepted):
            w.writerow([it, f"{p:.4f}", "medical" if ok else "non-medical"])
    metrics = {"n_images": len(res.items), "n_medical": int(res.accepted.sum()),
               "n_non_medical": int((~res.accepted).sum())}
    extra = {"threshold": res.threshold, "threshold_source": res.threshold_source,
             "rejected": [it for it, ok in zip(res.items, res.accepted) if not ok],
             "skipped": [{"file": f, "reason": r} for f, r in res.skipped]}
    identity = identity_record("gate", model=model_identity(model), data=dataset_identity(dataset),
                               threshold=res.threshold, threshold_source=res.threshold_source)
    write_result(out_dir, dataset=dataset.full_name, model=model.name,
                 task="gate", metrics=metrics, config=config, n_skipped=len(res.skipped),
                 extra=extra | provenance(model, dataset) | {"identity": identity})
    return metrics | extra


def gate_task(model: ModelBase | str, dataset: ImageDataset, out_dir: Path, config: dict,
              threshold: float | None = None, val_medical: Path | None = None, val_non_medical: Path | None = None,
              probe_file: Path | None = None, run: RunOptions | None = None) -> tuple[GateResult, dict]:
    """The ``gate`` task: resolve the threshold (given, chosen on validation folders of images, a probe's 0.5, or
    the model's validated one), score ``dataset``, write ``gate.csv`` and ``result.json``. The options are checked
    before a model (a spec is loaded as ``run`` says) or a validation folder is read.

    Raises:
        MedvlkitError: contradictory threshold sources (a probe with validation folders, a threshold with them, one
            validation folder without the other).
    """
    from medvlkit.tasks.probe import LinearProbe, check_probe_model

    if probe_file is not None and val_medical is not None:
        raise MedvlkitError("--probe picks its threshold at 0.5 (or --threshold); do not pass --val-* folders with it")
    if (val_medical is None) != (val_non_medical is None):
        raise MedvlkitError("pass both --val-medical and --val-non-medical (or neither)")
    if threshold is not None and val_medical is not None:
        raise MedvlkitError("pass either --threshold or the --val-* folders, not both")
    run = run or RunOptions()
    embed_options = run.embed_kwargs()
    model = run.load_model(model) if isinstance(model, str) else model
    if probe_file is None:
        model.require_text("the zero-shot medical-image gate (a gate from a probe works: --probe)")
    source = "given"
    if val_medical is not None and val_non_medical is not None:  # both or neither (checked above)
        from medvlkit.data import load_dataset

        med, non = (load_dataset(p, format="folder") for p in (val_medical, val_non_medical))
        threshold = threshold_from_validation(model, med, non, **embed_options)
        where = [os.path.commonpath(d.items) if d.items else d.name for d in (med, non)]
        source = f"balanced accuracy on {where[0]} vs {where[1]}"
    gate_probe = None
    if probe_file is not None:
        gate_probe, header = LinearProbe.load(probe_file)
        check_probe_model(header, model)
    res = run_gate(model, dataset, threshold, source, probe=gate_probe, **embed_options)
    return res, save_gate(res, out_dir, model, dataset, config)
