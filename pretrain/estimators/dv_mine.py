"""DV-MINE (Belghazi et al. 2018): the Donsker–Varadhan bound and its moving-average gradient.

    L(f) = log mean_marg e^{f} − mean_joint f,      MI estimate = −L.

The log of a minibatch mean makes the gradient biased; ``dv-mine-ema`` replaces the denominator of
the gradient, mean_marg e^f, by a moving average (MINE's bias correction). Per-rank DV is also
biased under DDP: ``reduce=True`` takes both means over every rank's pairs (autograd-aware), so W
ranks × batch B give the loss and gradient of one rank × W·B.
"""
from __future__ import annotations


import torch
from torch import nn

from .base import MIEstimate, log_ema_update, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("dv-mine")
class DVMINE(nn.Module):
    """Donsker–Varadhan bound on critic scores [N, M]."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.reduce = reduce

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        loss = masked_log_mean_exp(scores, neg, self.reduce) - masked_mean(scores, pos, self.reduce)
        return MIEstimate(loss, (-loss).detach().double())


@register("dv-mine-ema")
class DVMINEEMA(nn.Module):
    """DV bound whose gradient divides by a moving average of mean_marg e^f (rate ``alpha``).

    The value returned is the plain DV loss; only the gradient differs:
    ∇L = ∇ mean_marg e^f / ema − ∇ mean_joint f. The average is kept in the log domain
    (``log_ema`` buffer, checkpointed) and updated in training mode only.
    """

    def __init__(self, alpha: float = 0.01, reduce: bool = False):
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.reduce = reduce
        self.register_buffer("log_ema", torch.tensor(float("nan")))

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        joint = masked_mean(scores, pos, self.reduce)
        log_marg = masked_log_mean_exp(scores, neg, self.reduce)
        # torch.where, not `if`: reading a device value would stall the step
        if self.training:
            with torch.no_grad():
                current = log_marg.detach().to(self.log_ema.dtype)
                updated = log_ema_update(self.log_ema, current, self.alpha)
                self.log_ema.copy_(torch.where(torch.isnan(self.log_ema), current, updated))  # the first call starts it
        log_ema = torch.where(torch.isnan(self.log_ema), log_marg.detach(), self.log_ema.to(scores.dtype))
        surrogate = torch.exp(log_marg - log_ema) - joint
        dv = log_marg - joint
        loss = surrogate - surrogate.detach() + dv.detach()
        return MIEstimate(loss, (-dv).detach().double())
