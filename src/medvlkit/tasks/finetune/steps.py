"""One training step's loss and backward pass, for each mode; the same code runs on 1 or N ranks.

Both steps leave gradients that, summed over ranks (``distributed.reduce_gradients``), equal the gradient of the
global batch's loss; the temperature's gradient is computed in full on every rank and is averaged instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.engine.distributed import World, gather_cat
from medvlkit.engine.losses import pair_loss
from medvlkit.tasks.finetune.gradcache import gradcache_backward

MAX_SCALE = 100.0


def _cast(fn: Callable, autocast: Callable[[], contextlib.AbstractContextManager]) -> Callable:
    def run(x):
        with autocast():
            return fn(x).float()
    return run


def contrastive_step(model, pixels: torch.Tensor, tokens: dict, targets: torch.Tensor, world: World,
                     grad_cache: int = 0, autocast: Callable = contextlib.nullcontext,
                     scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    """The model's contrastive loss over the global batch (symmetric InfoNCE, or SigLIP's sigmoid loss for models
    with a learned logit bias); backward into this rank's slice.

    Args:
        model: a medvlkit model (``encode_image``/``encode_text``/``log_scale_param``).
        pixels, tokens: this rank's slice of the global batch.
        targets: (B_global, B_global) soft targets, rows in rank order.
        grad_cache: chunk size for GradCache (0: one forward pass with a graph for the whole slice).
        autocast: context manager factory for mixed precision.
        scale_loss: the AMP loss scaler's ``scale`` (identity without one).

    Returns:
        the global batch's loss.
    """
    enc_img = _cast(model.encode_image, autocast)
    enc_txt = _cast(model.encode_text, autocast)
    log_scale, bias = model.log_scale_param(), model.log_bias_param()
    if not grad_cache:
        img = gather_cat(enc_img(pixels), world)
        txt = gather_cat(enc_txt(tokens), world)
        loss = pair_loss(img, txt, log_scale, bias, targets, MAX_SCALE)
        scale_loss(loss).backward()
        return float(loss.detach())
    return float(gradcache_backward(enc_img, enc_txt, pixels, tokens, log_scale, grad_cache, targets, MAX_SCALE,
                                    gather=lambda t: gather_cat(t, world), scale_loss=scale_loss, bias=bias))


class ClassifierHead(nn.Module):
    """A linear layer on the (unnormalised) image embedding. (B, D) -> (B, C) logits."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def class_weights(labels: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """BCE: per-class positive weight negatives/positives; CE: inverse class frequency scaled to mean 1.
    ``labels``: (N, C) with NaN for unknown."""
    known = ~torch.isnan(labels)
    pos = ((labels == 1) & known).sum(0).float()
    if multilabel:
        neg = ((labels == 0) & known).sum(0).float()
        return neg / pos.clamp_min(1)
    freq = pos / pos.sum().clamp_min(1)
    w = 1.0 / freq.clamp_min(1e-6)
    return w / w.mean()


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, weights: torch.Tensor | None,
                    global_count: float) -> torch.Tensor:
    """Summed loss of this rank's rows divided by the global number of terms (so rank sums give the mean).

    CE on the single label (weights: per class); BCE with logits on known (non-NaN) entries (weights: pos_weight).
    """
    if multilabel:
        known = ~torch.isnan(labels)
        target = torch.nan_to_num(labels, nan=0.0)
        terms = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights, reduction="none")
        return (terms * known).sum() / global_count
    target = torch.nan_to_num(labels, nan=0.0).argmax(1)
    return F.cross_entropy(logits, target, weight=weights, reduction="sum") / global_count


def supervised_count(labels: torch.Tensor, multilabel: bool, weights: torch.Tensor | None) -> float:
    """This rank's normaliser: known entries (BCE) or the class weights of its rows (weighted CE's mean)."""
    if multilabel:
        return float((~torch.isnan(labels)).sum())
    target = torch.nan_to_num(labels, nan=0.0).argmax(1)
    return float(weights[target].sum()) if weights is not None else float(len(labels))


def supervised_step(model, head: ClassifierHead, pixels: torch.Tensor, labels: torch.Tensor, multilabel: bool,
                    weights: torch.Tensor | None, global_count: float, autocast: Callable = contextlib.nullcontext,
                    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    """Classification loss of this rank's slice; returns its share of the global mean loss."""
    with autocast():
        logits = head(model.encode_image(pixels, normalize=False)).float()
    loss = supervised_loss(logits, labels.to(logits.device), multilabel, weights, global_count)
    scale_loss(loss).backward()
    return float(loss.detach())


def class_text_embeddings(model, tokens: dict, owner: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, D) unit class embeddings from the prompts in ``tokens`` (``owner[i]``: the class of prompt i): each class
    the re-normalised mean of its prompts' unit embeddings, as :func:`medvlkit.engine.answer.ensemble_embeddings`
    computes them, but in the graph (the text tower trains)."""
    text = model.encode_text(tokens).float()
    sums = torch.zeros(n_classes, text.shape[1], device=text.device, dtype=text.dtype).index_add_(0, owner, text)
    counts = torch.bincount(owner, minlength=n_classes).clamp_min(1).to(text.dtype)
    return F.normalize(sums / counts[:, None], dim=-1)


def prompt_ce_step(model, pixels: torch.Tensor, target: torch.Tensor, tokens: dict, owner: torch.Tensor,
                   n_classes: int, global_count: float, autocast: Callable = contextlib.nullcontext,
                   scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    """CLIP-LoRA's loss on this rank's slice: cross-entropy of ``model.logit_scale * image @ classes^T`` (the model's
    own fixed temperature, as zero-shot scores) against the class index ``target``; the class embeddings are
    re-encoded every step (the text tower's adapters train). Summed over the slice and divided by the global batch
    size; returns that share."""
    with autocast():
        img = model.encode_image(pixels).float()
        classes = class_text_embeddings(model, tokens, owner, n_classes)
        logits = model.logit_scale * img @ classes.T
    loss = F.cross_entropy(logits, target.to(logits.device), reduction="sum") / global_count
    scale_loss(loss).backward()
    return float(loss.detach())
