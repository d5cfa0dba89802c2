"""InfoNCE (van den Oord et al. 2018): a softmax over each row's candidates.

    L(f) = mean_i [logsumexp_{j ∈ C_i} f(x_i, y_j) − f(x_i, y_i)] − log |C_i|,    MI = −L ≤ log |C_i|,

where C_i is row i's positive plus its marginal entries (``neg_mask``). Each row needs exactly
one positive. Across ranks, gather the y side with ``pretrain.dist.all_gather_cat`` and score
local rows against every column (``pretrain.dist.global_diag_mask``): then local row means under
DDP averaging already give the global-batch gradient; ``reduce=True`` also makes the value global.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import MIEstimate, masked_mean, masks_are_checked, resolve_masks
from .registry import register


@register("infonce")
class InfoNCE(nn.Module):
    """InfoNCE bound on critic scores [N, M]."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        # a given mask is read on the host only where its maker has not checked it (masks_checked)
        if pos_mask is not None and not masks_are_checked() and not (pos.sum(dim=1) == 1).all():
            raise ValueError("infonce needs exactly one joint pair (pos_mask) in every row")
        candidates = pos | neg
        row_lse = torch.logsumexp(scores.masked_fill(~candidates, float("-inf")), dim=1)
        positive = (scores * pos).sum(dim=1)
        per_row = positive - row_lse + torch.log(candidates.sum(dim=1).to(scores.dtype))
        rows = torch.ones_like(per_row, dtype=torch.bool)
        mi = masked_mean(per_row, rows, self.reduce)
        return MIEstimate(-mi, mi.detach().double())
