"""Contrastive losses shared by pretraining and fine-tuning."""

from __future__ import annotations

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
