"""THE zero-shot answer, in one place: a prompt set's class vectors for a model (prompt ensembles, encoded once
and kept), and :func:`answer`, which turns unit image embeddings into class log-probabilities with the model's own
temperature. Every caller goes through it: the ``zeroshot`` task, the Python API, the gate, ``serve``, ``explain``,
the demo, the domain check and fine-tuning's validation, so the same image, prompt set and classes give the same
numbers everywhere.

- ``softmax``: one label per image; softmax over class embeddings (each the mean of its prompt ensemble);
- ``pos_neg``: multi-label; per class a 2-way softmax between "X" and "no X" ensembles (CheXzero's method).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medvlkit.data.prompts import MODES, PromptSet
from medvlkit.engine.features import embed_texts
from medvlkit.engine.scores import check_finite, log_sigmoid, log_softmax
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase, l2_normalize


def ensemble_embeddings(model: ModelBase, prompts: PromptSet, side: str = "positive", cache: bool = False,
                        cache_dir: str | None = None) -> np.ndarray:
    """One embedding per class: the re-normalised mean of its phrases x templates. Returns (C, D).

    ``cache``: keep the texts' vectors in the on-disk text cache (see :func:`~medvlkit.engine.features.embed_texts`)."""
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
    """(N, D) x (C, D) -> (N, C) class log-probabilities, in float64 (see :mod:`medvlkit.engine.scores`)."""
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
        assert vectors.negative is not None  # a pos_neg set always has its negative prompts
        log_probs = pos_neg_log_probs(image_emb, vectors.positive, vectors.negative, logit_scale)
        over = POS_NEG_OVER
    return Answer(log_probs, list(vectors.classnames), vectors.mode, over)


def class_vectors(model: ModelBase, prompts: PromptSet, mode: str | None = None, cache: bool = False,
                  cache_dir: str | None = None) -> ClassVectors:
    """Encode a prompt set's classes (ensembled, see :func:`ensemble_embeddings`) for ``mode`` (default: the set's
    own). ``cache``: read/write the prompts' vectors in the on-disk text cache (never for weights being trained)."""
    model.require_text("zero-shot classification (it compares images with prompt texts)")
    mode = mode or prompts.mode
    if mode not in MODES:
        raise MedvlkitError(f"--mode {mode}: valid options: {', '.join(MODES)}")
    pos = ensemble_embeddings(model, prompts, "positive", cache, cache_dir)
    neg = ensemble_embeddings(model, prompts, "negative", cache, cache_dir) if mode == "pos_neg" else None
    return ClassVectors(prompts, mode, pos, neg)
