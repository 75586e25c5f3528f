"""Data parallel fine-tuning under ``torchrun``: process group setup, feature gathering, gradient reduction.

Each rank encodes its own contiguous slice of the global batch. For the contrastive loss the embeddings of all
ranks are gathered (the rank's own slice keeps its graph), so every rank computes the loss of the whole global
batch and back-propagates into its own slice only. Summing those gradients over ranks gives exactly the
single-process gradient of the global batch; parameters whose gradient every rank computes in full (the
temperature) are averaged instead. tests/integration/test_distributed.py checks the equality on 2 CPU processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's contiguous slice of a global batch (rank r takes the r-th of ``size`` near-equal parts)."""
        n = len(batch)
        return batch[self.rank * n // self.size:(self.rank + 1) * n // self.size]


def init_world(device: str) -> World:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU); else a single world.

    On CUDA this process's GPU is made the current device first (``device``'s index, else ``LOCAL_RANK``): NCCL's
    collectives (``all_gather_object`` included) run on the current device, which would otherwise be cuda:0 for
    every rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if device.startswith("cuda"):
        torch.cuda.set_device(device if ":" in device else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def gather_cat(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's (b_r, ...) tensor in rank order; this rank's part keeps its autograd graph.

    Ranks may hold different row counts (the last batch of an epoch).
    """
    if world.size == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    rows = [int(s.item()) for s in sizes]
    width = max(rows)
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    parts = [p[:r] for p, r in zip(parts, rows)]
    parts[world.rank] = x
    return torch.cat(parts)


def gather_objects(obj, world: World, to_main: bool = False) -> list:
    """Every rank's picklable object, in rank order, on every rank (``to_main``: on rank 0 only; the other ranks get
    an empty list)."""
    if world.size == 1:
        return [obj]
    if to_main:
        out = [None] * world.size if world.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out or []
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def reduce_gradients(params: list[torch.nn.Parameter], world: World, replicated: set[int]) -> None:
    """Sum gradients over ranks; average those of parameters in ``replicated`` (ids whose full gradient every rank
    computed, such as the temperature)."""
    if world.size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        if id(p) in replicated:
            p.grad /= world.size


def reduce_mean(value: float, world: World) -> float:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (torchrun jobs), if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
