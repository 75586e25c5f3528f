"""Contrastive losses shared by pretraining and fine-tuning, and the soft targets they train towards."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss).

    Args:
        img, txt: (B, D) unit vectors; row i of each is a matching pair.
        scale: the temperature (exp of the learned log scale), a scalar tensor.
        targets: (B, B) soft targets whose rows sum to 1 (identity when None: one positive per row).
    """
    logits = scale * img @ txt.T  # (B, B)
    if targets is None:
        labels = torch.arange(len(img), device=img.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), as transformers' ``SiglipModel`` computes it.

    Every image-text pair is a binary problem: label +1 for matching pairs (``targets > 0``: images sharing a label
    or caption are matches too), -1 otherwise; loss = -sum(log sigmoid(label * (scale * img @ txt.T + bias))) / B.
    """
    logits = scale * img @ txt.T + bias  # (B, B)
    labels = (2 * torch.eye(len(img), device=img.device) - 1) if targets is None else (2 * (targets > 0).float() - 1)
    return -F.logsigmoid(labels * logits).sum() / len(img)


def pair_loss(img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor | None, max_scale: float = 100.0) -> torch.Tensor:
    """The model's own contrastive objective: SigLIP's sigmoid loss when it has a learned bias, else InfoNCE."""
    scale = log_scale.exp().clamp(max=max_scale)
    if bias is not None:
        return sigmoid_loss(img, txt, scale, bias, targets)
    return contrastive_loss(img, txt, scale, targets)


def pair_targets(groups: list[str], captions: list[str]) -> np.ndarray:
    """(B, B) soft targets: image i matches text j when they share a group or the caption text itself.

    Each row is normalised to sum to 1, so a batch with repeated templated captions ("a CT image.") has no
    false negatives.
    """
    g, c = np.asarray(groups), np.asarray(captions)
    same = ((g[:, None] == g[None, :]) | (c[:, None] == c[None, :])).astype(np.float32)
    return same / same.sum(1, keepdims=True)
