"""How much a zero-shot number depends on the wording of its prompts: the same images scored under each template of
a prompt set alone, each synonym alone, and the full ensemble, with CIs; the spread, the best and worst wording
named, the ensemble's rank; and a check that no class's prompts point the wrong way (its positives scoring LOWER
than its negatives: a pos/neg pair inverted, or a softmax phrase that describes another class).

Every variant is answered through the one zero-shot path (``classify``: :func:`medvlkit.tasks.zeroshot.
zeroshot_classify`, passed in by the zero-shot task that calls this module) on the image embeddings computed once, so
a variant differs from the run's own numbers only by its texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import ClassPrompts, PromptSet
from medvlkit.engine.features import ImageEmbeddings
from medvlkit.engine.operating_points import class_columns, usable_class
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.tasks.evaluate import evaluate_probs

SINGLE, MULTI = ("auroc", "accuracy"), ("auroc", "macro_accuracy")


def prompt_variants(prompts: PromptSet) -> list[tuple[str, str, PromptSet]]:
    """(kind, name, prompt set) for the ensemble, each template alone (with every phrase) and each synonym alone
    (the j-th phrase of every class, cycling where a class has fewer, with every template)."""
    out = [("ensemble", "ensemble (every template x every phrase)", prompts)]
    if len(prompts.templates) > 1:
        for i, t in enumerate(prompts.templates):
            out.append(("template", f"template {i + 1}: {t}", replace(prompts, templates=[t])))
    n_syn = max(len(c.positive) for c in prompts.classes)
    if n_syn > 1:
        for j in range(n_syn):
            classes = [ClassPrompts(c.name, [c.positive[j % len(c.positive)]],
                                    [c.negative[j % len(c.negative)]] if c.negative else [], list(c.aliases))
                       for c in prompts.classes]
            words = " / ".join(c.positive[0] for c in classes)
            out.append(("synonym", f"synonym {j + 1}: {words}", replace(prompts, classes=classes)))
    return out


def check_wordings(prompts: PromptSet) -> list[tuple[str, str, PromptSet]]:
    """:func:`prompt_variants`, refusing a set with nothing to compare (before any image is read).

    Raises:
        MedvlkitError: one template and one phrase per class (``--classes`` alone gives such a set).
    """
    variants = prompt_variants(prompts)
    if len(variants) == 1:
        raise MedvlkitError(f"--prompt-sensitivity: prompt set '{prompts.name}' has one template and one phrase per "
                            "class, so there are no wordings to compare; use a shipped set (--prompts) or a JSON set "
                            "with several templates or phrases")
    return variants


def class_aurocs(labels: np.ndarray, log_probs: np.ndarray, classnames: list[str], multilabel: bool,
                 n_bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per class, the AUROC of its own score for it (one-vs-rest, known labels only: the class as
    :func:`~medvlkit.engine.operating_points.class_columns` reads it) with a CI, and whether the class's prompts point
    the wrong way: ``inverted`` when the whole CI lies below 0.5, ``suspect`` when only the estimate does."""
    out = {}
    for c, name in enumerate(classnames):
        y, s = class_columns(labels, log_probs, multilabel, c)
        if usable_class(y) is not None:  # no positive or no negative: no AUROC
            continue
        known = ~np.isnan(y)
        ev = evaluate_probs(y[known, None], None, [name], True, n_bootstrap, seed, log_probs=s[known, None])
        auc, ci = ev.metrics["auroc"], ev.ci.get("auroc")
        verdict = "inverted" if ci and ci[1] < 0.5 else "suspect" if auc < 0.5 else "ok"
        out[name] = {"auroc": auc, "ci": ci, "verdict": verdict}
    return out


def prompt_sensitivity(classify: Callable[..., Any], model: ModelBase, dataset: ImageDataset, prompts: PromptSet,
                       embeddings: ImageEmbeddings, mode: str | None = None, n_bootstrap: int = 1000, seed: int = 0,
                       **embed_options: Any) -> dict[str, Any]:
    """Score ``dataset`` (labelled) under every variant of ``prompts`` (:func:`prompt_variants`) with ``classify``
    (``zeroshot_classify``'s signature).

    Returns:
        ``variants`` (kind, name, metrics, ci, per-class AUROC checks), ``spread`` (max - min over the single-wording
        variants, per metric), ``best`` / ``worst`` (by AUROC), ``ensemble_rank`` (1 = best of all variants),
        ``inverted`` (class -> [{wording, verdict, auroc}] where its prompts point the wrong way).

    Raises:
        MedvlkitError: the data has no labels, or the set has a single wording (nothing to compare).
    """
    if not dataset.has_labels:
        raise MedvlkitError("--prompt-sensitivity needs labelled data: it compares wordings by their metrics")
    variants = check_wordings(prompts)
    rows = []
    for kind, name, variant in tqdm(variants, desc="prompt wordings", unit="wording",
                                    disable=not embed_options.get("progress", True)):
        res = classify(model, dataset, variant, mode, embeddings=embeddings, **embed_options)
        if res.labels is None:
            raise MedvlkitError("--prompt-sensitivity needs labelled data")
        multilabel = res.mode == "pos_neg"
        wanted = MULTI if multilabel else SINGLE
        ev = evaluate_probs(res.labels, None, res.classnames, multilabel, n_bootstrap, seed, log_probs=res.log_probs)
        rows.append({"kind": kind, "name": name, "metrics": {k: ev.metrics.get(k) for k in wanted},
                     "ci": {k: ev.ci.get(k) for k in wanted if ev.ci.get(k)},
                     "classes": class_aurocs(res.labels, res.log_probs, res.classnames, multilabel, n_bootstrap,
                                             seed)})
    keys = list(rows[0]["metrics"])
    single = [r for r in rows if r["kind"] != "ensemble"]
    spread = {k: float(max(r["metrics"][k] for r in single) - min(r["metrics"][k] for r in single)) for k in keys}
    ranked = sorted(rows, key=lambda r: -float(r["metrics"]["auroc"]))
    inverted: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for cls, check in r["classes"].items():
            if check["verdict"] != "ok":
                inverted.setdefault(cls, []).append({"wording": r["name"], "verdict": check["verdict"],
                                                     "auroc": check["auroc"]})
    return {"variants": rows, "spread": spread, "best": ranked[0]["name"], "worst": ranked[-1]["name"],
            "ensemble_rank": 1 + next(i for i, r in enumerate(ranked) if r["kind"] == "ensemble"),
            "n_variants": len(rows), "inverted": inverted}
