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
from medvlkit.identity import dataset_identity, identity_record, model_identity, result_options
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


POS_NEG_OVER = "each class against its negative prompts"
"""What ``softmax_over`` says for ``pos_neg``: one 2-way softmax per class, never across classes."""


@dataclass(frozen=True)
class ClassVectors:
    """A prompt set's class embeddings for one model, computed once and reused for any number of images:
    ``positive`` (C, D) and, in ``pos_neg`` mode, ``negative`` (C, D)."""

    prompts: PromptSet
    mode: str
    positive: np.ndarray
    negative: np.ndarray | None = None

    @property
    def classnames(self) -> list[str]:
        return self.prompts.classnames

    def restrict(self, names: list[str]) -> ClassVectors:
        """The vectors of the classes matching ``names`` (by name or alias, see :meth:`PromptSet.match`), renamed
        to them and in their order: a softmax then runs over these classes only. Free texts are never matched.

        Raises:
            MedvlkitError: a name has no class in the set; the set is free texts.
        """
        if self.prompts.free_text:
            raise MedvlkitError(f"free texts ({self.classnames}) are not classes; they cannot be restricted to {names}")
        rows = self.prompts.match(names)
        return ClassVectors(self.prompts.select(names), self.mode, self.positive[rows],
                            None if self.negative is None else self.negative[rows])


@dataclass
class Answer:
    """Zero-shot scores of N images over the classes of one prompt set.

    Attributes:
        log_probs: (N, C) float64 natural-log probabilities.
        classnames: the C classes, in column order.
        mode: ``softmax`` (one softmax over ``softmax_over``) or ``pos_neg`` (per class, "X" against "no X").
        softmax_over: the classes the softmax ran over (softmax), or :data:`POS_NEG_OVER`.
    """

    log_probs: np.ndarray
    classnames: list[str]
    mode: str
    softmax_over: list[str] | str

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs)


def answer(image_emb: np.ndarray, vectors: ClassVectors, logit_scale: float,
           restrict_to: list[str] | None = None) -> Answer:
    """THE zero-shot answer: class log-probabilities of (N, D) unit image embeddings. Every caller (the
    ``zeroshot`` task, the Python API, ``serve``, ``explain``, the gate, the demo, fine-tuning's validation) goes
    through here, so the same image and prompt set give the same numbers everywhere.

    Args:
        image_emb: (N, D) image embeddings of the model that encoded ``vectors``.
        vectors: the prompt set's class vectors (:func:`class_vectors`).
        logit_scale: the model's own temperature.
        restrict_to: class names (or aliases) to keep, in this order; the softmax runs over them only. None: every
            class of the set.
    """
    check_finite(image_emb, "image embeddings")
    if restrict_to is not None:
        vectors = vectors.restrict(list(restrict_to))
    if vectors.mode == "softmax":
        log_probs = softmax_log_probs(image_emb, vectors.positive, logit_scale)
        over: list[str] | str = list(vectors.classnames)
    else:
        log_probs = pos_neg_log_probs(image_emb, vectors.positive, vectors.negative, logit_scale)
        over = POS_NEG_OVER
    return Answer(log_probs, list(vectors.classnames), vectors.mode, over)


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

    @property
    def probs(self) -> np.ndarray:
        """(N_ok, C) probabilities (derived from ``log_probs``)."""
        return np.exp(self.log_probs)


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
                      embed_options: dict) -> dict:
    """What a zero-shot result is computed from (see :mod:`medvlkit.identity`): the model, the data, the prompt
    texts and mode (``prompts_used(...).identity(mode)``), the bootstrap and the options that change numbers."""
    return identity_record("zeroshot_classification", model=model_identity(model), data=dataset_identity(dataset),
                           prompts=prompt_identity, bootstrap=n_bootstrap, seed=seed,
                           options=result_options(embed_options))


def zeroshot_classify(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, mode: str | None = None,
                      embeddings: ImageEmbeddings | None = None, **embed_options) -> ZeroShotResult:
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
    mode = mode or prompts.mode
    restrict = data_classes(dataset, prompts, mode)
    emb = embeddings if embeddings is not None else embed_images(model, dataset, **embed_options)
    vectors = class_vectors(model, prompts, mode, cache=embed_options.get("cache", True),
                            cache_dir=embed_options.get("cache_dir"))
    ans = answer(emb.vectors, vectors, model.logit_scale, restrict)
    used = prompts_used(dataset, prompts, mode)
    labels = dataset.labels[emb.indices] if dataset.has_labels and restrict is not None else None
    return ZeroShotResult(ans.log_probs, ans.classnames, mode, emb, labels, used.class_texts(mode), ans.softmax_over,
                          prompts.name, used.identity(mode))


def save_zeroshot(result: ZeroShotResult, dataset: ImageDataset, model: ModelBase, out_dir: str | Path,
                  config: dict, n_bootstrap: int = 1000, seed: int = 0, extra: dict | None = None,
                  embed_options: dict | None = None) -> dict:
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
    write_predictions(out_dir, result.embeddings.items, result.classnames, result.log_probs, result.labels,
                      multilabel, softmax_over=result.softmax_over)
    (out_dir / "prompts.json").write_text(json.dumps(result.prompt_texts, indent=1) + "\n")
    name = dataset.full_name
    extra |= provenance(model, dataset, result.embeddings, DEFAULT_THRESHOLD_SOURCE)
    extra["identity"] = zeroshot_identity(model, dataset, result.prompt_identity, n_bootstrap, seed,
                                          embed_options or {})
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
    return save_zeroshot(res, dataset, model, out_dir, config, n_bootstrap, seed, gated, kwargs)
