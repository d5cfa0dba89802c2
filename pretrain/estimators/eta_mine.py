"""η-MINE (paper §3, Algorithm 1): the DV bound with its log replaced by a learned scalar η.

    L(f, η) = e^{-η} · mean_marg e^{f} − mean_joint f + η − 1,      MI estimate = −L.

For fixed f the minimising η is log mean_marg e^{f}, where L equals the DV loss; and
−L(f, η) = NWJ(f + 1 − η). The loss is linear in both expectations, so the gradient of a minibatch
mean is unbiased: with local means, DDP's averaging over W ranks of batch B gives exactly the
gradient of one rank with batch W·B (equal batches), no cross-rank reduction needed.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain import dist

from .base import MIEstimate, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("eta-mine")
class EtaMINE(nn.Module):
    """η-MINE loss on critic scores. ``eta`` is a parameter the caller optimises (Adam, lr 1e-2).

    Args:
        eta_init: initial η (the paper starts at 0).
        n_critic: Algorithm 1's block-coordinate schedule: critic steps per η step; the loop
            asks ``eta_step_due(step)`` before stepping η's optimiser.
        reduce: reduce both means over ranks (only needed for unequal per-rank batches).

    The loss is finite in float32 while log mean_marg e^f − η < 88 (e.g. scores of ±100 with η
    near its optimum); the reported estimate is computed in float64.
    """

    def __init__(self, eta_init: float = 0.0, n_critic: int = 1, reduce: bool = False):
        super().__init__()
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))
        self.n_critic = int(n_critic)
        self.reduce = reduce
        self.normaliser = torch.tensor(float("nan"))

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        joint = masked_mean(scores, pos, self.reduce)
        log_marg = masked_log_mean_exp(scores, neg, self.reduce)
        eta = self.eta.to(scores.dtype)
        normaliser = torch.exp(log_marg - eta)
        loss = normaliser - joint + eta - 1.0
        self.normaliser = normaliser.detach()
        mi = joint.detach().double() - torch.exp(log_marg.detach().double() - eta.detach().double()) - eta.detach().double() + 1.0
        return MIEstimate(loss, mi)

    @torch.no_grad()
    def closed_form_eta(self, scores, pos_mask=None, neg_mask=None) -> torch.Tensor:
        """η* = log mean_marg e^f over the marginal pairs of every rank (so η stays identical)."""
        _, neg = resolve_masks(scores, pos_mask, neg_mask)
        return masked_log_mean_exp(scores.detach(), neg, reduce=dist.is_distributed())

    @torch.no_grad()
    def set_eta(self, value) -> None:
        """Overwrite η in place (closed-form update)."""
        self.eta.copy_(torch.as_tensor(value, dtype=self.eta.dtype))

    def eta_step_due(self, step: int) -> bool:
        """Algorithm 1: η moves once after every ``n_critic`` critic steps (step counts from 0)."""
        return (step + 1) % self.n_critic == 0
