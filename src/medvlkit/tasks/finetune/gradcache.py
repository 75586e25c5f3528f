"""GradCache (Gao et al. 2021): a contrastive batch larger than memory allows, with the same loss and gradients.

The contrastive loss couples every pair in the batch, so plain gradient accumulation changes the objective.
GradCache instead (1) embeds the whole batch in chunks without building graphs, (2) computes the full-batch
loss on those embeddings and caches its gradient with respect to each embedding, then (3) re-embeds chunk by
chunk with graphs and back-propagates the cached gradients. Random states are replayed per chunk so dropout
masks match between passes, which makes the result equal to the plain large-batch step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from medvlkit.engine.losses import pair_loss


class RandContext:
    """Captures the CPU (and CUDA) random state at creation; ``with ctx:`` replays it."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self._fork: Any = None  # torch.random.fork_rng's context while replaying

    def __enter__(self) -> None:
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _select(batch, sl: slice):
    return {k: v[sl] for k, v in batch.items()} if isinstance(batch, dict) else batch[sl]


def gradcache_backward(encode_image: Callable, encode_text: Callable, pixels: torch.Tensor, tokens: dict,
                       log_scale: torch.Tensor, chunk_size: int, targets: torch.Tensor | None = None,
                       max_scale: float = 100.0, gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                       scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """One contrastive step's backward pass in chunks. Gradients accumulate into the parameters' ``.grad``.

    Args:
        encode_image, encode_text: differentiable encoders returning unit vectors (B, D).
        pixels: (B, 3, S, S); tokens: tokenizer output for B texts.
        log_scale: the learned log temperature (a parameter).
        chunk_size: images/texts per forward pass with a graph (bounds activation memory).
        targets: optional soft targets over the (gathered) batch.
        gather: makes the global batch from this process's embeddings, keeping their graph (data parallel:
            ``distributed.gather_cat``); identity on one process.
        scale_loss: the AMP loss scaler's ``scale`` (identity without one).
        bias: SigLIP's learned logit bias (then the sigmoid loss is used), None for CLIP's InfoNCE.

    Returns:
        the full-batch loss (detached).
    """
    n = len(pixels)
    slices = _chunks(n, chunk_size)
    states, img_reps, txt_reps = [], [], []
    with torch.no_grad():
        for sl in slices:
            img_state = RandContext()
            img_reps.append(encode_image(pixels[sl]))
            txt_state = RandContext()
            txt_reps.append(encode_text(_select(tokens, sl)))
            states.append((img_state, txt_state))
    img = torch.cat(img_reps).detach().requires_grad_()
    txt = torch.cat(txt_reps).detach().requires_grad_()
    loss = pair_loss(gather(img), gather(txt), log_scale, bias, targets, max_scale)
    scale_loss(loss).backward()  # grads w.r.t. the cached embeddings, and the temperature's own gradient
    img_grad, txt_grad = img.grad, txt.grad
    assert img_grad is not None and txt_grad is not None  # both are leaves of the loss
    for sl, (img_state, txt_state) in zip(slices, states):
        with img_state:
            out = encode_image(pixels[sl])
        if out.requires_grad:  # not when the tower is frozen
            out.backward(img_grad[sl])
        with txt_state:
            out = encode_text(_select(tokens, sl))
        if out.requires_grad:
            out.backward(txt_grad[sl])
    return loss.detach()
