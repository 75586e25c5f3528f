"""Zero-shot classification from text prompts.

- ``softmax``: one label per image; softmax over class embeddings (each the mean of its prompt ensemble).
- ``pos_neg``: multi-label; per class a 2-way softmax between "X" and "no X" ensembles (CheXzero's method).
Both use the model's own learned temperature (``model.logit_scale``), never a hard-coded 100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import PromptSet
from medvlkit.engine.answer import (  # noqa: F401 - the answer path, re-exported: medvlkit.tasks.zeroshot.answer stays public
    POS_NEG_OVER,
    Answer,
    ClassVectors,
    answer,
    class_vectors,
    ensemble_embeddings,
    pos_neg_log_probs,
    pos_neg_probs,
    softmax,
    softmax_log_probs,
    softmax_probs,
)
from medvlkit.engine.features import ImageEmbeddings, embed_images
from medvlkit.engine.identity import dataset_identity, identity_record, model_identity, result_options
from medvlkit.engine.results import DEFAULT_THRESHOLD_SOURCE, provenance, write_predictions, write_result
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.tasks.domain import DomainCheck, check_domain, domain_vectors
from medvlkit.tasks.evaluate import (
    ClinicalOptions,
    Scored,
    SubgroupOptions,
    attributes_for,
    conformal_between,
    decision_curves,
    evaluate_probs,
    operating_points_between,
    subgroup_report,
)

if TYPE_CHECKING:
    from medvlkit.engine.options import RunOptions



@dataclass
class ZeroShotResult:
    """Per-image class scores and what they refer to."""

    log_probs: np.ndarray            # (N_ok, C) float64 natural-log probabilities
    classnames: list[str]
    mode: str
    embeddings: ImageEmbeddings
    labels: np.ndarray | None = None  # (N_ok, C) true labels when the data has them
    prompt_texts: dict[str, list[str]] = field(default_factory=dict)
    softmax_over: list[str] | str = ""
    prompt_set: str = ""
    prompt_identity: str = ""         # sha256 of the mode and every prompt text (PromptSet.identity)
    domain: DomainCheck | None = None  # each image checked against the prompt set's domain (None: the set has none)

    @property
    def probs(self) -> np.ndarray:
        """(N_ok, C) probabilities (derived from ``log_probs``)."""
        return np.exp(self.log_probs)


def data_classes(dataset: ImageDataset, prompts: PromptSet, mode: str | None = None) -> list[str] | None:
    """The classes zero-shot scores on ``dataset`` cover: the dataset's own (matched to the set by name or alias;
    a softmax runs over them only) when it is labelled, else every class of the set (None). Free texts are never
    matched to classes.

    Raises:
        MedvlkitError: a dataset class has no prompts; a softmax asked of multi-label data.
    """
    if not dataset.has_labels or prompts.free_text:
        return None
    prompts.match(dataset.classnames)  # refused before any image is read
    if (mode or prompts.mode) == "softmax" and dataset.multilabel:
        raise MedvlkitError(f"dataset '{dataset.name}' is multi-label: use --mode pos_neg")
    return list(dataset.classnames)


def prompts_used(dataset: ImageDataset, prompts: PromptSet, mode: str | None = None) -> PromptSet:
    """The part of ``prompts`` that zero-shot on ``dataset`` uses (:func:`data_classes`), named as the data names
    its classes: its texts are what a result depends on."""
    restrict = data_classes(dataset, prompts, mode)
    return prompts.select(restrict) if restrict is not None else prompts


def zeroshot_identity(model: ModelBase, dataset: ImageDataset, prompt_identity: str, n_bootstrap: int, seed: int,
                      embed_options: dict[str, Any], clinical: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a zero-shot result is computed from (see :mod:`medvlkit.engine.identity`): the model, the data, the prompt
    texts and mode (``prompts_used(...).identity(mode)``), the bootstrap and the options that change numbers; and the
    clinical figures asked for (:func:`clinical_identity`), only when some were."""
    return identity_record("zeroshot_classification", model=model_identity(model), data=dataset_identity(dataset),
                           prompts=prompt_identity, bootstrap=n_bootstrap, seed=seed,
                           options=result_options(embed_options), **({"clinical": clinical} if clinical else {}))


def clinical_identity(validation: ImageDataset | None = None, clinical: ClinicalOptions | None = None,
                      subgroups: SubgroupOptions | None = None, sensitivity: bool = False) -> dict[str, Any] | None:
    """What a zero-shot result's clinical figures add to its identity, None when none was asked (so results without
    them keep their identity): the validation split operating points and prediction sets are fitted on with the
    targets, the subgroup columns and bands (and the metadata file's sha256), prompt sensitivity."""
    import hashlib

    out: dict[str, Any] = {}
    if validation is not None:
        c = clinical or ClinicalOptions()
        out["validation"] = {"data": dataset_identity(validation), "specificities": list(c.specificities),
                             "sensitivities": list(c.sensitivities), "prevalence": c.prevalence,
                             "positive": c.positive, "conformal": c.conformal,
                             "conformal_mode": c.conformal_mode if c.conformal else None}
    if subgroups is not None and subgroups.columns:
        meta = subgroups.metadata
        out["subgroups"] = {"columns": subgroups.columns, "age_bands": subgroups.age_bands,
                            "min_size": subgroups.min_size, "metric": subgroups.metric,
                            "metadata_sha256": hashlib.sha256(Path(meta).read_bytes()).hexdigest() if meta else None}
    if sensitivity:
        out["prompt_sensitivity"] = True
    return out or None


def zeroshot_classify(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, mode: str | None = None,
                      embeddings: ImageEmbeddings | None = None, **embed_options: Any) -> ZeroShotResult:
    """Embed a dataset's images and classify them zero-shot.

    Args:
        model: any medvlkit model.
        dataset: images, labelled or not. With labels, the prompt classes are matched to the dataset's
            class names (or aliases), put in the dataset's order, and the softmax runs over those classes only
            (recorded as ``softmax_over``); without labels it runs over every class of the set.
        prompts: a :class:`PromptSet` (``load_prompt_set`` / ``prompt_set_from_classes``).
        mode: ``softmax`` or ``pos_neg``; default: the prompt set's own mode.
        embeddings: the dataset's image embeddings when already computed (e.g. by the gate).
        **embed_options: passed to :func:`embed_images` (batch_size, num_workers, cache, on_error...).
    """
    model.require_text("zero-shot classification (it compares images with prompt texts)")
    mode = mode or prompts.mode
    restrict = data_classes(dataset, prompts, mode)
    emb = embeddings if embeddings is not None else embed_images(model, dataset, **embed_options)
    vectors = class_vectors(model, prompts, mode, cache=embed_options.get("cache", True),
                            cache_dir=embed_options.get("cache_dir"))
    ans = answer(emb.vectors, vectors, model.logit_scale, restrict)
    used = prompts_used(dataset, prompts, mode)
    labels = dataset.label_matrix[emb.indices] if dataset.has_labels and restrict is not None else None
    domain = check_domain(model, emb.vectors, prompts, domain_vectors(model, embed_options.get("cache", True),
                                                                      embed_options.get("cache_dir")))
    return ZeroShotResult(ans.log_probs, ans.classnames, mode, emb, labels, used.class_texts(mode), ans.softmax_over,
                          prompts.name, used.identity(mode), domain)


def save_zeroshot(result: ZeroShotResult, dataset: ImageDataset, model: ModelBase, out_dir: str | Path,
                  config: dict[str, Any], n_bootstrap: int = 1000, seed: int = 0, extra: dict[str, Any] | None = None,
                  embed_options: dict[str, Any] | None = None,
                  subgroups: SubgroupOptions | None = None,
                  clinical: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a zero-shot result (when the data has labels); write result.json (with its ``identity``: see
    :func:`zeroshot_identity`; ``embed_options`` are the options it was embedded with), predictions.csv and
    prompts.json.

    Returns:
        the dict written to ``result.json``.
    """
    out_dir = Path(out_dir)
    multilabel = result.mode == "pos_neg"
    metrics, ci = {}, {}
    extra = {"classnames": result.classnames, "mode": result.mode, "softmax_over": result.softmax_over,
             "prompt_set": result.prompt_set, "prompt_identity": result.prompt_identity,
             "n_images": len(result.embeddings.items),
             "skipped": [{"file": f, "reason": r} for f, r in result.embeddings.skipped]} | (extra or {})
    if result.labels is not None:
        ev = evaluate_probs(result.labels, None, result.classnames, multilabel, n_bootstrap, seed,
                            log_probs=result.log_probs)
        metrics, ci, extra["confusion_matrix"] = ev.metrics, ev.ci, ev.confusion_matrix
        extra |= ev.extra
        if subgroups is not None and subgroups.columns:
            known = {k: [v[i] for i in result.embeddings.indices] for k, v in dataset.attributes.items()}
            rows = scored(result)
            extra["subgroups"] = subgroup_report(rows, attributes_for(rows.files, subgroups, known), subgroups,
                                                 n_bootstrap, seed)
    elif subgroups is not None and subgroups.columns:
        raise MedvlkitError("--subgroups needs labelled data: these images have no labels")
    check = result.domain
    flags = None if check is None else {"p_domain": check.p_domain, "in_domain": check.in_domain}
    write_predictions(out_dir, result.embeddings.items, result.classnames, result.log_probs, result.labels,
                      multilabel, softmax_over=result.softmax_over, extra=flags)
    (out_dir / "prompts.json").write_text(json.dumps(result.prompt_texts, indent=1) + "\n")
    name = dataset.full_name
    if result.domain is not None:
        extra["domain_check"] = result.domain.record(result.embeddings.items)
    extra |= provenance(model, dataset, result.embeddings, DEFAULT_THRESHOLD_SOURCE)
    extra["identity"] = zeroshot_identity(model, dataset, result.prompt_identity, n_bootstrap, seed,
                                          embed_options or {}, clinical)
    path = write_result(out_dir, dataset=name, model=model.name, task="zeroshot_classification", metrics=metrics,
                        ci=ci, config=config, seed=seed, n_skipped=len(result.embeddings.skipped), extra=extra)
    return json.loads(path.read_text())


def scored(result: ZeroShotResult) -> Scored:
    """A labelled zero-shot result as the arrays every clinical figure is computed from."""
    if result.labels is None:
        raise MedvlkitError("operating points and subgroups need labelled data")
    return Scored(list(result.embeddings.items), result.classnames, result.labels, result.log_probs,
                  result.mode == "pos_neg")


def validation_points(model: ModelBase, validation: ImageDataset, prompts: PromptSet, mode: str | None,
                      result: ZeroShotResult, clinical: ClinicalOptions, n_bootstrap: int, seed: int,
                      **embed_options: Any) -> dict[str, Any]:
    """Operating points of a zero-shot ``result`` with thresholds chosen on ``validation`` (classified the same way),
    its decision curves, and with ``clinical.conformal`` prediction sets fitted there: ``{"operating_points",
    "decision_curve"[, "conformal"]}`` for its ``result.json``."""
    val = scored(zeroshot_classify(model, validation, prompts, mode, **embed_options))
    test = scored(result)
    points = operating_points_between(val, test, clinical, n_bootstrap, seed, validation.full_name)
    out: dict[str, Any] = {"operating_points": points, "decision_curve": decision_curves(test, clinical.positive)}
    if clinical.conformal is not None:
        if test.multilabel:
            out["conformal_not_made"] = "prediction sets are for single-label data; these are multi-label"
        else:
            out["conformal"] = conformal_between(val, test, clinical.conformal, clinical.conformal_mode,
                                                 n_bootstrap, seed, validation.full_name)
    return out


def clinical_figures(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, mode: str | None,
                     result: ZeroShotResult, validation: ImageDataset | None, clinical: ClinicalOptions,
                     sensitivity: bool, n_bootstrap: int, seed: int, **embed_options: Any) -> dict[str, Any]:
    """The clinical figures a zero-shot ``result`` was asked for, for its ``result.json``: with ``validation``,
    operating points, decision curves and prediction sets (:func:`validation_points`); with ``sensitivity``, every
    wording of ``prompts`` on the same embeddings (:mod:`medvlkit.tasks.prompt_sensitivity`). ``zeroshot`` and the
    ``eval`` sweep both come here (subgroups are scored where the result is saved: :func:`save_zeroshot`)."""
    out: dict[str, Any] = {}
    if validation is not None:
        out |= validation_points(model, validation, prompts, mode, result, clinical, n_bootstrap, seed,
                                 **embed_options)
    if sensitivity:
        from medvlkit.tasks.prompt_sensitivity import prompt_sensitivity

        out["prompt_sensitivity"] = prompt_sensitivity(zeroshot_classify, model, dataset, prompts, result.embeddings,
                                                       mode, n_bootstrap, seed, **embed_options)
    return out


def zeroshot_prompt_sensitivity(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, mode: str | None = None,
                                n_bootstrap: int = 1000, seed: int = 0, **embed_options: Any) -> dict[str, Any]:
    """``dataset`` (labelled) scored under each wording of ``prompts``: every template alone, every synonym alone and
    the ensemble, with CIs, the spread, the best and worst wording, the ensemble's rank and classes whose prompts point
    the wrong way (see :mod:`medvlkit.tasks.prompt_sensitivity`). The images are embedded once."""
    from medvlkit.tasks.prompt_sensitivity import prompt_sensitivity

    emb = embed_images(model, dataset, **embed_options)
    return prompt_sensitivity(zeroshot_classify, model, dataset, prompts, emb, mode, n_bootstrap, seed,
                              **embed_options)


def zeroshot_task(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, out_dir: Path, config: dict[str, Any],
                  mode: str | None = None, run: RunOptions | None = None, n_bootstrap: int = 1000, seed: int = 0,
                  gate: bool = False, gate_threshold: float | None = None,
                  subgroups: SubgroupOptions | None = None, sensitivity: bool = False,
                  validation: ImageDataset | None = None, clinical: ClinicalOptions | None = None) -> dict[str, Any]:
    """The ``zeroshot`` task: (optionally gate, then) classify ``dataset`` and write result.json, predictions.csv
    and prompts.json into ``out_dir``. ``run``: :class:`medvlkit.engine.options.RunOptions`. ``subgroups``: also
    score per subgroup; ``sensitivity``: also score every wording of the prompt set
    (:mod:`medvlkit.tasks.prompt_sensitivity`); ``validation``: a labelled split of the same data where operating
    points' thresholds are chosen (:func:`validation_points`, targets from ``clinical``). Returns the result."""
    from medvlkit.engine.options import RunOptions
    from medvlkit.tasks.gate import gate_before

    kwargs = (run or RunOptions()).embed_kwargs()
    dataset, gated, emb = gate_before(model, dataset, gate, gate_threshold, **kwargs)
    res = zeroshot_classify(model, dataset, prompts, mode, embeddings=emb, **kwargs)
    extra = dict(gated or {}) | clinical_figures(model, dataset, prompts, mode, res, validation,
                                                 clinical or ClinicalOptions(), sensitivity, n_bootstrap, seed,
                                                 **kwargs)
    return save_zeroshot(res, dataset, model, out_dir, config, n_bootstrap, seed, extra, kwargs, subgroups,
                         clinical_identity(validation, clinical, subgroups, sensitivity))
