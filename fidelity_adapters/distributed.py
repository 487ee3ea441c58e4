"""Data-parallel training over processes (torchrun), with the single-process loop's results.

`fidelity-adapters train` (or `train()`) started by `torchrun --nproc_per_node N` joins the
process group torchrun describes (gloo on CPU, nccl on CUDA: `backend_for`). Every rank holds the same
structures and draws the same global batches; rank r takes every N-th structure of each. The
losses are masked means, so before backward the label counts are summed over the ranks and
each rank divides its own squared-error sums by the global counts; the gradients are then
summed. That is the gradient of the union batch, exactly, whatever the ranks' label mixes
(averaging per-rank losses, as a plain DDP wrapper does, is not, when the ranks hold
different numbers of labels). With one process every operation here is a no-op.

Why plain torch.distributed and not Lightning: the loop's guarantees (masked per-fidelity
losses, double backward, exact resume, atomic rank-0 checkpoints) live in training.py already;
one all-reduce of the counts and one of the gradients is all that data parallelism adds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's part of a global batch: every size-th item from its rank."""
        return list(items[self.rank :: self.size])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over the ranks (in place)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over the ranks, one flat all-reduce per dtype; a parameter without
        a gradient on this rank (an empty shard) counts as zero."""
        if self.size == 1:
            return
        by_dtype: dict[torch.dtype, list] = {}
        for p in parameters:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
            flat = self.sum(torch.cat([g.reshape(-1) for g in grads]))
            for p, summed in zip(group, flat.split([p.numel() for p in group])):
                p.grad = summed.view_as(p).clone()

    def check_same(self, what: str, value: str) -> None:
        """Every rank must hold the same `value` (a digest of its data, say), else an error
        that names the ranks that differ."""
        if self.size == 1:
            return
        values: list = [None] * self.size
        dist.all_gather_object(values, value)
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise ValueError(f"ranks disagree on {what}: rank 0 has {values[0]!r}, ranks {odd} have {[values[r] for r in odd]}")


def backend_for(device: str | torch.device) -> str:
    """gloo on CPU; on CUDA, nccl for the gradients and gloo for the label counts and metric
    sums, which stay on the CPU (nccl alone cannot reduce a CPU tensor)."""
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def world(device: str | torch.device = "cpu") -> World:
    """The process group this process belongs to, joined now if torchrun started it and no
    one has yet (`backend_for(device)`); World() for a plain single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size())
