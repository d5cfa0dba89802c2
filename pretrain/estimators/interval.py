"""An MI estimate with a confidence interval: the bound read on several evaluation batches, and a
percentile bootstrap of the mean over those batches.

    result = evaluate(bound, [{"scores": s} for s in score_batches])   # Interval(estimate, low, high, batches)

The interval covers the evaluation noise of a fixed critic (which batches were drawn), not the
spread over training runs; a bound read per batch is the mean of per-batch values, so a
log-of-a-mean bound (DV, InfoNCE) carries its per-batch bias into it.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import nn


class Interval(NamedTuple):
    """Mean of the per-batch estimates (nats) and its bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    batches: int


def bootstrap_interval(values: torch.Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Per-batch estimates [K] -> their mean and the percentile bootstrap interval of the mean
    (``resamples`` resamples of the K batches with replacement). K = 1 gives a zero-width interval."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise ValueError(f"need finite per-batch estimates, got {values.tolist()}")
    if not 0.0 < level < 1.0 or resamples < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level} and {resamples}")
    k = values.numel()
    gen = torch.Generator().manual_seed(seed)
    means = values[torch.randint(k, (resamples, k), generator=gen)].mean(1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return Interval(float(values.mean()), low, high, k)


@torch.no_grad()
def read_out(bound: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    """Read ``bound`` (in eval mode, so moving averages stay still) on each batch — a dict of its
    call arguments, e.g. {"scores": [N, M], "pos_mask": ..., "log_baseline": ...} -> per-batch
    estimates [K] in float64, non-finite ones included."""
    was_training = bound.training
    bound.eval()
    try:
        return torch.stack([bound(**b).mi.double() for b in batches])
    finally:
        bound.train(was_training)


def evaluate(bound: nn.Module, batches: Iterable[dict], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """The mean of ``read_out(bound, batches)`` with its bootstrap interval over the batches."""
    return bootstrap_interval(read_out(bound, batches), level, resamples, seed)
