"""a-MINE (TUBA, Poole et al. 2019): a baseline η(y) per sample of y instead of one scalar.

    L(f, η) = mean_marg e^{f(x_i, y_j) − η(y_j)} + mean_j η(y_j) − mean_joint f − 1,   MI = −L.

``log_baseline`` is an [M] tensor η(y_j), one value per column of the score matrix, usually the
output of a small network of y that the caller trains with the critic.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MIEstimate, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("a-mine", takes_baseline=True)
class AMINE(nn.Module):
    """TUBA bound on critic scores [N, M] with a per-column log-baseline [M]."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None, *, log_baseline: torch.Tensor) -> MIEstimate:
        """scores [N, M], masks [N, M] bool, log_baseline [M] -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        if log_baseline.shape != (scores.shape[1],):
            raise ValueError(f"log_baseline must have shape [{scores.shape[1]}] (one per column), got {tuple(log_baseline.shape)}")
        log_baseline = log_baseline.to(scores.dtype)
        joint = masked_mean(scores, pos, self.reduce)
        log_marg = masked_log_mean_exp(scores - log_baseline[None, :], neg, self.reduce)
        baseline_mean = masked_mean(log_baseline, torch.ones_like(log_baseline, dtype=torch.bool), self.reduce)
        loss = torch.exp(log_marg) + baseline_mean - joint - 1.0
        mi = joint.detach().double() - torch.exp(log_marg.detach().double()) - baseline_mean.detach().double() + 1.0
        return MIEstimate(loss, mi)
