"""f-MINE: the f-divergence (NWJ) bound with the critic shifted by one.

    L(f) = mean_marg e^{f} − mean_joint f − 1,      MI estimate = −L = NWJ(f + 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MIEstimate, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("f-mine")
class FMINE(nn.Module):
    """f-divergence bound on critic scores [N, M]. Its value is e^f-scale by nature, so it is
    finite in float32 only for marginal scores below about 88; the estimate is computed in float64."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        joint = masked_mean(scores, pos, self.reduce)
        log_marg = masked_log_mean_exp(scores, neg, self.reduce)
        loss = torch.exp(log_marg) - joint - 1.0
        mi = joint.detach().double() - torch.exp(log_marg.detach().double()) + 1.0
        return MIEstimate(loss, mi)
