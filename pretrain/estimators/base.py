"""Shared pieces of the bounds: the result type, mask handling and (optionally rank-reduced) means.

Every bound reads a matrix of critic scores f(x_i, y_j) [N, M] and two boolean masks of the
same shape: ``pos_mask`` marks joint pairs (x_i, y_i) ~ p(x, y); ``neg_mask`` marks marginal pairs
(x_i, y_j) ~ p(x)p(y). By default the joint pairs are the diagonal of a square matrix and every
other entry is a marginal pair.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import NamedTuple

import torch

from pretrain import dist


class MIEstimate(NamedTuple):
    """``loss``: scalar to minimise (carries the gradient). ``mi``: the estimate in nats, detached,
    in float64 (e^f-scale read-outs such as NWJ would overflow float32 for scores near 100)."""

    loss: torch.Tensor
    mi: torch.Tensor


_MASKS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("masks_checked", default=False)


@contextlib.contextmanager
def masks_checked():
    """Within it, :func:`resolve_masks` trusts the values of the masks it is given.

    For callers that built or checked their masks on the host (the jigsaw task's ``host_prepare``):
    reading mask values on an accelerator stalls the step until the device catches up. Inside a
    region ``torch.compile`` traces, a context variable cannot be set without breaking the graph, so
    there it sets nothing: the training step enters it outside the compiled model
    (``pretrain.train.train_step``), and the traced code reads that.
    """
    if torch.compiler.is_compiling():
        yield
        return
    token = _MASKS_CHECKED.set(True)
    try:
        yield
    finally:
        _MASKS_CHECKED.reset(token)


def masks_are_checked() -> bool:
    """Whether the caller is inside :func:`masks_checked` (its masks' values are trusted)."""
    return _MASKS_CHECKED.get()


def resolve_masks(
    scores: torch.Tensor, pos_mask: torch.Tensor | None, neg_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``scores`` [N, M] and return boolean (pos_mask, neg_mask), each [N, M].

    Given masks are checked for overlap and emptiness (values: outside :func:`masks_checked`); the
    default diagonal needs N >= 2 for a marginal pair.
    """
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 2-D float tensor [N, M], got {tuple(scores.shape)} {scores.dtype}")
    n, m = scores.shape
    given = pos_mask is not None or neg_mask is not None
    if pos_mask is None:
        if n != m:
            raise ValueError(f"scores is {n}x{m}: pass pos_mask for a non-square score matrix")
        if n < 2 and neg_mask is None:
            raise ValueError("need at least one joint pair (pos_mask) and one marginal pair (neg_mask): N >= 2")
        pos_mask = torch.eye(n, dtype=torch.bool, device=scores.device)
    if neg_mask is None:
        neg_mask = ~pos_mask
    for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if mask.shape != scores.shape or mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(scores.shape)}, got {tuple(mask.shape)} {mask.dtype}")
    if given and not masks_are_checked():
        if (pos_mask & neg_mask).any():
            raise ValueError("pos_mask and neg_mask overlap: a pair cannot be both joint and marginal")
        if not pos_mask.any() or not neg_mask.any():
            raise ValueError("need at least one joint pair (pos_mask) and one marginal pair (neg_mask)")
    return pos_mask, neg_mask


def log_ema_update(log_ema: torch.Tensor, log_batch: torch.Tensor, alpha: float) -> torch.Tensor:
    """log((1 - alpha) e^log_ema + alpha e^log_batch), the moving average of the EMA bounds kept in the
    log domain; alpha = 1 keeps the batch alone (log 0 = -inf, where log1p(-1) would raise)."""
    keep = math.log1p(-alpha) if alpha < 1 else -math.inf
    return torch.logaddexp(log_ema + keep, log_batch + math.log(alpha))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, reduce: bool = False) -> torch.Tensor:
    """Mean of ``values[mask]``; with ``reduce`` the mean over the entries of every rank.

    Masked arithmetic rather than ``values[mask]``, whose size depends on the mask's values and so
    waits for the device."""
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    count = mask.sum().to(values.dtype)
    if reduce:
        total, count = dist.all_reduce_sum(total), dist.all_reduce_sum(count)
    return total / count


def masked_log_mean_exp(values: torch.Tensor, mask: torch.Tensor, reduce: bool = False) -> torch.Tensor:
    """log mean exp of ``values[mask]``, shifted by the max so that scores of ±100 do not overflow.

    With ``reduce`` the mean runs over the entries of every rank (autograd-aware).
    """
    selected = values.masked_fill(~mask, float("-inf"))  # e^-inf = 0: masked-out entries add nothing
    shift = selected.max().detach()
    if reduce:
        shift = dist.all_reduce_max(shift)
    total = torch.exp(selected - shift).sum()
    count = mask.sum().to(values.dtype)
    if reduce:
        total, count = dist.all_reduce_sum(total), dist.all_reduce_sum(count)
    return torch.log(total) + shift - torch.log(count)
