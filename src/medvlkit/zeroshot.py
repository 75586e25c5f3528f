"""Zero-shot classification from text prompts.

- ``softmax``: one label per image; softmax over class embeddings (each the mean of its prompt ensemble).
- ``pos_neg``: multi-label; per class a 2-way softmax between "X" and "no X" ensembles (CheXzero's method).
Both use the model's own learned temperature (``model.logit_scale``), never a hard-coded 100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medvlkit.data.dataset import ImageDataset
from medvlkit.errors import MedvlkitError
from medvlkit.evaluate import evaluate_probs
from medvlkit.features import ImageEmbeddings, embed_images, embed_texts
from medvlkit.models.base import ModelBase, l2_normalize
from medvlkit.prompts import MODES, PromptSet
from medvlkit.results import DEFAULT_THRESHOLD_SOURCE, provenance, write_predictions, write_result
from medvlkit.scores import check_finite, log_sigmoid, log_softmax


def ensemble_embeddings(model: ModelBase, prompts: PromptSet, side: str = "positive", cache: bool = False,
                        cache_dir: str | None = None) -> np.ndarray:
    """One embedding per class: the re-normalised mean of its phrases x templates. Returns (C, D).

    ``cache``: keep the texts' vectors in the on-disk text cache (see :func:`~medvlkit.features.embed_texts`)."""
    out = []
    for c in prompts.classes:
        phrases = c.positive if side == "positive" else c.negative
        if not phrases:
            raise MedvlkitError(f"class '{c.name}' of prompt set '{prompts.name}' has no {side} phrases; "
                                "pos_neg needs both positive and negative phrases per class")
        vectors = embed_texts(model, prompts.texts(phrases), cache=cache, cache_dir=cache_dir)
        out.append(l2_normalize(torch.from_numpy(vectors.mean(axis=0))).numpy())
    return np.stack(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def softmax_log_probs(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, D) x (C, D) -> (N, C) class log-probabilities, in float64 (see :mod:`medvlkit.scores`)."""
    logits = logit_scale * (image_emb.astype(np.float64) @ class_emb.astype(np.float64).T)
    return log_softmax(logits)


def pos_neg_log_probs(image_emb: np.ndarray, pos_emb: np.ndarray, neg_emb: np.ndarray,
                      logit_scale: float) -> np.ndarray:
    """(N, D), (C, D), (C, D) -> (N, C): per class log P("X") from a 2-way softmax against "no X", in float64."""
    img = image_emb.astype(np.float64)
    margin = logit_scale * (img @ pos_emb.astype(np.float64).T - img @ neg_emb.astype(np.float64).T)
    return log_sigmoid(margin)


def softmax_probs(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, D) x (C, D) -> (N, C) class probabilities."""
    return np.exp(softmax_log_probs(image_emb, class_emb, logit_scale))


def pos_neg_probs(image_emb: np.ndarray, pos_emb: np.ndarray, neg_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, D), (C, D), (C, D) -> (N, C): per class P("X") from a 2-way softmax against "no X"."""
    return np.exp(pos_neg_log_probs(image_emb, pos_emb, neg_emb, logit_scale))


@dataclass
class ZeroShotResult:
    """Per-image class scores and what they refer to."""

    log_probs: np.ndarray            # (N_ok, C) float64 natural-log probabilities
    classnames: list[str]
    mode: str
    embeddings: ImageEmbeddings
    labels: np.ndarray | None = None  # (N_ok, C) true labels when the data has them
    prompt_texts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def probs(self) -> np.ndarray:
        """(N_ok, C) probabilities (derived from ``log_probs``)."""
        return np.exp(self.log_probs)


def classify(model: ModelBase, image_emb: np.ndarray, prompts: PromptSet, mode: str | None = None) -> np.ndarray:
    """Probabilities for precomputed image embeddings (N, D). Returns (N, C)."""
    return np.exp(classify_log(model, image_emb, prompts, mode))


@dataclass(frozen=True)
class ClassVectors:
    """A prompt set's class embeddings for one model, computed once and reused for any number of images:
    ``positive`` (C, D) and, in ``pos_neg`` mode, ``negative`` (C, D)."""

    prompts: PromptSet
    mode: str
    positive: np.ndarray
    negative: np.ndarray | None = None

    def log_probs(self, image_emb: np.ndarray, logit_scale: float) -> np.ndarray:
        """Float64 log-probabilities for (N, D) image embeddings. Returns (N, C)."""
        check_finite(image_emb, "image embeddings")
        if self.mode == "softmax":
            return softmax_log_probs(image_emb, self.positive, logit_scale)
        return pos_neg_log_probs(image_emb, self.positive, self.negative, logit_scale)


def class_vectors(model: ModelBase, prompts: PromptSet, mode: str | None = None, cache: bool = False,
                  cache_dir: str | None = None) -> ClassVectors:
    """Encode a prompt set's classes (ensembled, see :func:`ensemble_embeddings`) for ``mode`` (default: the set's
    own). ``cache``: read/write the prompts' vectors in the on-disk text cache (never for weights being trained)."""
    mode = mode or prompts.mode
    if mode not in MODES:
        raise MedvlkitError(f"--mode {mode}: valid options: {', '.join(MODES)}")
    pos = ensemble_embeddings(model, prompts, "positive", cache, cache_dir)
    neg = ensemble_embeddings(model, prompts, "negative", cache, cache_dir) if mode == "pos_neg" else None
    return ClassVectors(prompts, mode, pos, neg)


def classify_log(model: ModelBase, image_emb: np.ndarray, prompts: PromptSet, mode: str | None = None,
                 cache: bool = False, cache_dir: str | None = None) -> np.ndarray:
    """Float64 log-probabilities for precomputed image embeddings (N, D). Returns (N, C).

    ``cache``: read/write the prompts' vectors in the on-disk text cache (never for weights being trained)."""
    check_finite(image_emb, "image embeddings")
    return class_vectors(model, prompts, mode, cache, cache_dir).log_probs(image_emb, model.logit_scale)


def zeroshot_classify(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, mode: str | None = None,
                      embeddings: ImageEmbeddings | None = None, **embed_options) -> ZeroShotResult:
    """Embed a dataset's images and classify them zero-shot.

    Args:
        model: any medvlkit model.
        dataset: images, labelled or not. With labels, the prompt classes are matched to the dataset's
            class names (or aliases) and put in the dataset's order.
        prompts: a :class:`PromptSet` (``load_prompt_set`` / ``prompt_set_from_classes``).
        mode: ``softmax`` or ``pos_neg``; default: the prompt set's own mode.
        embeddings: the dataset's image embeddings when already computed (e.g. by the gate).
        **embed_options: passed to :func:`embed_images` (batch_size, num_workers, cache, on_error...).
    """
    mode = mode or prompts.mode
    if dataset.has_labels:
        prompts = prompts.select(dataset.classnames)
        if mode == "softmax" and dataset.multilabel:
            raise MedvlkitError(f"dataset '{dataset.name}' is multi-label: use --mode pos_neg")
    emb = embeddings if embeddings is not None else embed_images(model, dataset, **embed_options)
    log_probs = classify_log(model, emb.vectors, prompts, mode, cache=embed_options.get("cache", True),
                             cache_dir=embed_options.get("cache_dir"))
    texts = {c.name: prompts.texts(c.positive) + (prompts.texts(c.negative) if mode == "pos_neg" else [])
             for c in prompts.classes}
    labels = dataset.labels[emb.indices] if dataset.has_labels else None
    return ZeroShotResult(log_probs, prompts.classnames, mode, emb, labels, texts)


def save_zeroshot(result: ZeroShotResult, dataset: ImageDataset, model: ModelBase, out_dir: str | Path,
                  config: dict, n_bootstrap: int = 1000, seed: int = 0, extra: dict | None = None) -> dict:
    """Score a zero-shot result (when the data has labels); write result.json, predictions.csv, prompts.json.

    Returns:
        the dict written to ``result.json``.
    """
    out_dir = Path(out_dir)
    multilabel = result.mode == "pos_neg"
    metrics, ci = {}, {}
    extra = {"classnames": result.classnames, "mode": result.mode, "n_images": len(result.embeddings.items),
             "skipped": [{"file": f, "reason": r} for f, r in result.embeddings.skipped]} | (extra or {})
    if result.labels is not None:
        ev = evaluate_probs(result.labels, None, result.classnames, multilabel, n_bootstrap, seed,
                            log_probs=result.log_probs)
        metrics, ci, extra["confusion_matrix"] = ev.metrics, ev.ci, ev.confusion_matrix
        extra |= ev.extra
    write_predictions(out_dir, result.embeddings.items, result.classnames, result.log_probs, result.labels,
                      multilabel)
    (out_dir / "prompts.json").write_text(json.dumps(result.prompt_texts, indent=1) + "\n")
    name = dataset.full_name
    extra |= provenance(model, dataset, result.embeddings, DEFAULT_THRESHOLD_SOURCE)
    path = write_result(out_dir, dataset=name, model=model.name, task="zeroshot_classification", metrics=metrics,
                        ci=ci, config=config, seed=seed, n_skipped=len(result.embeddings.skipped), extra=extra)
    return json.loads(path.read_text())


def zeroshot_task(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, out_dir: Path, config: dict,
                  mode: str | None = None, run=None, n_bootstrap: int = 1000, seed: int = 0, gate: bool = False,
                  gate_threshold: float | None = None) -> dict:
    """The ``zeroshot`` task: (optionally gate, then) classify ``dataset`` and write result.json, predictions.csv
    and prompts.json into ``out_dir``. ``run``: :class:`medvlkit.options.RunOptions`. Returns the result."""
    from medvlkit.gate import gate_before
    from medvlkit.options import RunOptions

    kwargs = (run or RunOptions()).embed_kwargs()
    dataset, gated, emb = gate_before(model, dataset, gate, gate_threshold, **kwargs)
    res = zeroshot_classify(model, dataset, prompts, mode, embeddings=emb, **kwargs)
    return save_zeroshot(res, dataset, model, out_dir, config, n_bootstrap, seed, gated)
