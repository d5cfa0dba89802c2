"""SMILE (Song & Ermon 2020): the DV read-out with the partition term's scores clipped to [−τ, τ].

    MI = mean_joint f − log mean_marg e^{clip(f, −τ, τ)},

trained with the JSD objective's gradient (as the authors' code does). Clipping bounds the
variance of the partition estimate at the price of a bias that shrinks as τ grows.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import MIEstimate, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("smile")
class SMILE(nn.Module):
    """SMILE bound on critic scores [N, M], clip ``tau`` (default 5; None: no clipping = DV value)."""

    def __init__(self, tau: float | None = 5.0, reduce: bool = False):
        super().__init__()
        if tau is not None and tau <= 0:
            raise ValueError(f"tau must be positive or None, got {tau}")
        self.tau = tau
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        clipped = scores if self.tau is None else scores.clamp(-self.tau, self.tau)
        dv = masked_mean(scores, pos, self.reduce) - masked_log_mean_exp(clipped, neg, self.reduce)
        js = masked_mean(-F.softplus(-scores), pos, self.reduce) - masked_mean(F.softplus(scores), neg, self.reduce)
        loss = -(js + (dv - js).detach())
        return MIEstimate(loss, dv.detach().double())
