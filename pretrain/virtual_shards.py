"""Virtual shards: a step's global batch is V micro-batches, whichever number of workers W computes it.

Virtual shard ``v`` (0 ≤ v < V) owns what a rank owned when V ranks ran one batch each: its data
stream (the stream of ``rank=v, world_size=V``: sample order and augmentation seeds from the seed,
epoch, v and the batch index), its RNG state (dropout), its batch (the bound's joint and marginal pairs
and batch norm's batch statistics come from that micro-batch alone) and its stream position. Worker
``r`` of W runs the contiguous shards ``r·V/W … (r+1)·V/W − 1`` each step, accumulating their gradients
(each loss divided by V/W, DDP's average over W then makes the mean over V); the task's buffers (batch
norm's running statistics, a bound's moving average) start every micro-batch from the step's values and
become the mean of the V micro-batches' updates, summed in shard order (:class:`StepBuffers`). So W
changes only the order of float additions; ``docs/reliability.md`` says what that leaves.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain import dist


def count(cfg) -> int:
    """V of a config: ``data.virtual_shards``, or ``train.num_workers`` when it is unset."""
    return cfg.data.virtual_shards or cfg.train.num_workers


def owned(rank: int, world: int, virtual: int) -> range:
    """The virtual shards rank ``rank`` of ``world`` runs (``world`` divides ``virtual``)."""
    if virtual % world:
        raise ValueError(f"{world} workers cannot share {virtual} virtual shards evenly")
    per = virtual // world
    return range(rank * per, (rank + 1) * per)


def divisors(virtual: int) -> list[int]:
    """The worker counts a run of ``virtual`` shards can run on, ascending."""
    return [w for w in range(1, virtual + 1) if virtual % w == 0]


def seeded_rng(seed: int, shards: range) -> list[dict]:
    """Each shard's initial RNG state (Python, NumPy, torch): seeded from ``(seed, v)`` as rank ``v`` of
    V ranks is seeded, so V = W gives the streams one rank a shard would have."""
    import random

    import numpy as np

    from pretrain.checkpoint import capture_rng

    states = []
    for v in shards:
        s = seed * 1000 + v + 1
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        states.append(capture_rng())
    return states


class StepBuffers:
    """The buffers of ``module`` over one step of micro-batches.

    :meth:`begin` before micro-batch ``j`` (the first keeps the step's starting values, the others start
    from them again), :meth:`keep` after it, :meth:`combine` after the last: every floating buffer becomes
    the mean over the V micro-batches of every rank (gathered in shard order and summed in that order, so
    the result does not depend on W). For batch norm's running statistics that mean is the update one
    batch-norm layer would make from the mean of the micro-batches' statistics (the update is linear).
    Integer buffers (batches counted) keep the value after the last micro-batch: each counted one.
    """

    def __init__(self, module: nn.Module):
        buffers = list(module.buffers())
        self.floats = [b for b in buffers if b.is_floating_point()]
        self.all = buffers
        self.start: list[torch.Tensor] = []
        self.kept: list[torch.Tensor] = []

    @torch.no_grad()
    def begin(self, j: int) -> None:
        if j == 0:
            self.start = [b.detach().clone() for b in self.all]
            self.kept = []
            return
        for b, s in zip(self.all, self.start):
            b.copy_(s)

    @torch.no_grad()
    def keep(self) -> None:
        if self.floats:
            self.kept.append(torch.cat([b.detach().reshape(-1).double() for b in self.floats]))

    @torch.no_grad()
    def combine(self) -> None:
        if not self.floats:
            return
        every = dist.all_gather_cat(torch.stack(self.kept))  # [V, n], rank order = shard order
        mean = every.sum(dim=0) / every.shape[0]
        offset = 0
        for b in self.floats:
            b.copy_(mean[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
