"""JSD (Deep InfoMax, Hjelm et al. 2019): the Jensen–Shannon f-GAN objective as a surrogate.

    objective = mean_joint(−softplus(−f)) − mean_marg softplus(f).

The gradient is the objective's; the reported MI is NWJ(f + 1) = mean_joint f + 1 − mean_marg e^f
of the same critic (the JS-optimal critic is log p(x,y)/(p(x)p(y)), where this equals the MI), as
in Poole et al. and Song & Ermon. The loss is −objective (bounded, log-domain); the estimate is
computed in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MIEstimate, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("jsd")
class JSD(nn.Module):
    """Jensen–Shannon surrogate with an NWJ read-out, on critic scores [N, M]."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        objective = masked_mean(-F.softplus(-scores), pos, self.reduce) - masked_mean(F.softplus(scores), neg, self.reduce)
        joint = masked_mean(scores.detach(), pos, self.reduce)
        log_marg = masked_log_mean_exp(scores.detach(), neg, self.reduce)
        nwj = joint.double() + 1.0 - torch.exp(log_marg.double())
        return MIEstimate(-objective, nwj)
