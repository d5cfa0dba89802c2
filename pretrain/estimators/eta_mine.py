"""η-MINE (paper §3, Algorithm 1): the DV bound with its log replaced by a learned scalar η.

    L(f, η) = e^{-η} · mean_marg e^{f} − mean_joint f + η − 1,      MI estimate = −L.

For fixed f the minimising η is log mean_marg e^{f}, where L equals the DV loss; and
−L(f, η) = NWJ(f + 1 − η). The loss is linear in both expectations, so the gradient of a minibatch
mean is unbiased: with local means, DDP's averaging over W ranks of batch B gives exactly the
gradient of one rank with batch W·B (equal batches), no cross-rank reduction needed.

Every η-MINE bound also reports ``mi/refit``: the bound with η in closed form on the same pairs,
i.e. the DV value mean_joint f − log mean_marg e^f, never below −L(f, η) (docs/bounds.md).

Variants (docs/bounds.md has the measurements):
- ``eta-mine-clip``: η-MINE of the clipped critic g = clip(f, −τ, τ) (joint and marginal terms):
  a valid bound for g whose marginal term e^{g−η} cannot explode.
- ``eta-mine-ema``: η is not trained by a gradient but set, once every ``n_critic`` steps, to the
  log of a moving average of past batches' mean_marg e^f (reduced over ranks). Given η the
  critic's gradient is the unbiased minibatch gradient of L(f, η).

:func:`eta_step` is Algorithm 1's η step for every caller (pretraining, the Gaussian benchmark,
the MI-GAN).
"""
from __future__ import annotations


import torch
from torch import nn

from pretrain import dist

from .base import MIEstimate, log_ema_update, masked_log_mean_exp, masked_mean, resolve_masks
from .registry import register


@register("eta-mine", has_eta=True)
class EtaMINE(nn.Module):
    """η-MINE loss on critic scores. ``eta`` is a parameter the caller optimises (Adam, lr 1e-2).

    Args:
        eta_init: initial η (the paper starts at 0).
        n_critic: Algorithm 1's block-coordinate schedule: critic steps per η step (see
            :func:`eta_step`).
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
        self.refit = torch.tensor(float("nan"), dtype=torch.float64)

    def critic_values(self, scores: torch.Tensor) -> torch.Tensor:
        """The witness the bound is taken of: the scores themselves (the clipped variant clips)."""
        return scores

    def forward(self, scores, pos_mask=None, neg_mask=None) -> MIEstimate:
        """scores [N, M], masks [N, M] bool -> MIEstimate(loss [], mi [])."""
        pos, neg = resolve_masks(scores, pos_mask, neg_mask)
        f = self.critic_values(scores)
        joint = masked_mean(f, pos, self.reduce)
        log_marg = masked_log_mean_exp(f, neg, self.reduce)
        self.before_loss(log_marg.detach())
        eta = self.eta.to(f.dtype)
        normaliser = torch.exp(log_marg - eta)
        loss = normaliser - joint + eta - 1.0
        self.normaliser = normaliser.detach()
        joint64, log_marg64, eta64 = joint.detach().double(), log_marg.detach().double(), eta.detach().double()
        self.refit = joint64 - log_marg64
        mi = joint64 - torch.exp(log_marg64 - eta64) - eta64 + 1.0
        return MIEstimate(loss, mi)

    def before_loss(self, log_marg: torch.Tensor) -> None:
        """Hook with this batch's log mean_marg e^f (detached) before η is read; plain η-MINE: none."""

    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached scalars of the last call: η, the normaliser e^{-η}·mean_marg e^f and
        ``mi/refit`` (the bound at η = log mean_marg e^f of the same pairs)."""
        return {"eta": self.eta.detach().clone(), "normaliser": self.normaliser.clone(), "mi/refit": self.refit.clone()}

    @torch.no_grad()
    def closed_form_eta(self, scores, pos_mask=None, neg_mask=None) -> torch.Tensor:
        """η* = log mean_marg e^f over the marginal pairs of every rank (so η stays identical)."""
        _, neg = resolve_masks(scores, pos_mask, neg_mask)
        return masked_log_mean_exp(self.critic_values(scores.detach()), neg, reduce=dist.is_distributed())

    @torch.no_grad()
    def set_eta(self, value) -> None:
        """Overwrite η in place (closed-form update)."""
        self.eta.copy_(torch.as_tensor(value, dtype=self.eta.dtype, device=self.eta.device))

    def eta_step_due(self, step: int) -> bool:
        """Algorithm 1: η moves once after every ``n_critic`` critic steps (step counts from 0)."""
        return (step + 1) % self.n_critic == 0

    def closed_form_step(self) -> None:
        """η's own update on a due step for bounds whose η has no gradient; plain η-MINE: none."""


@register("eta-mine-clip", has_eta=True)
class EtaMINEClip(EtaMINE):
    """η-MINE of the clipped witness g = clip(f, −τ, τ) in both terms:

        L(f, η) = e^{-η} · mean_marg e^{g} − mean_joint g + η − 1.

    A valid bound for every f (it is η-MINE of g), at most 2τ, and one marginal pair can add at
    most e^{τ−η}/|marg| to the loss. Clipping only the marginal term
    would not do: the joint term would then push f up without limit wherever f > τ (the loss is
    unbounded below), which is why SMILE trains with another objective. ``tau`` 7.5 rather than
    SMILE's 5: a bound of g is at most 2τ, tight for the 8-nat staircase level (docs/bounds.md).
    """

    def __init__(self, tau: float = 7.5, eta_init: float = 0.0, n_critic: int = 1, reduce: bool = False):
        super().__init__(eta_init=eta_init, n_critic=n_critic, reduce=reduce)
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)

    def critic_values(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.clamp(-self.tau, self.tau)


@register("eta-mine-ema", has_eta=True)
class EtaMINEEMA(EtaMINE):
    """η-MINE whose η is the log of a moving average (rate ``alpha``) of past batches'
    mean_marg e^f, set in closed form once every ``n_critic`` steps.

    The batch's log mean_marg e^f is reduced over ranks, so η is identical on every rank. The
    first training call warm-starts the average (and η) from its own batch. η is a parameter
    without gradient (``requires_grad=False``): optimisers skip it, checkpoints keep it, and
    ``log_ema`` is a checkpointed buffer. Its critic gradient equals DV-MINE-EMA's except that
    the average holds past batches only, which keeps it the unbiased gradient of L(f, η).
    """

    def __init__(self, alpha: float = 0.1, eta_init: float = 0.0, n_critic: int = 1, reduce: bool = False):
        super().__init__(eta_init=eta_init, n_critic=n_critic, reduce=reduce)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.eta.requires_grad_(False)
        self.register_buffer("log_ema", torch.tensor(float("nan"), dtype=torch.float64))
        self.batch_log_marg = torch.tensor(float("nan"), dtype=torch.float64)

    @torch.no_grad()
    def before_loss(self, log_marg: torch.Tensor) -> None:
        if not self.training:
            return
        log_marg = log_marg.detach().double()
        if not self.reduce and dist.is_distributed():  # the mean over every rank's pairs (equal batches)
            shift = dist.all_reduce_max(log_marg)
            log_marg = torch.log(dist.all_reduce_mean_detached(torch.exp(log_marg - shift))) + shift
        self.batch_log_marg = log_marg
        # warm start on the first call; torch.where, not `if`: reading a device value would stall the step
        started = ~torch.isnan(self.log_ema)
        self.set_eta(torch.where(started, self.eta.double(), log_marg))
        self.log_ema.copy_(torch.where(started, self.log_ema, log_marg))

    @torch.no_grad()
    def closed_form_step(self) -> None:
        batch = self.batch_log_marg.to(self.log_ema.device)
        updated = log_ema_update(self.log_ema, batch, self.alpha)
        self.log_ema.copy_(torch.where(torch.isnan(batch), self.log_ema, updated))
        self.set_eta(torch.where(torch.isnan(self.log_ema), self.eta.double(), self.log_ema))  # no training call yet: keep η


def eta_step(module: nn.Module, optimiser: torch.optim.Optimizer | None, step: int) -> bool:
    """Algorithm 1's η step, called after critic step ``step`` (counted from 0).

    ``module`` is a bound, or anything holding bounds (a task, a bank of bounds, a GAN's MI
    module); ``optimiser`` is the one on the bounds' own parameters (η), or None. When every
    η-MINE bound in ``module`` is due (``n_critic`` steps since its last η step), each closed-form
    bound sets its η and the optimiser steps the gradient-trained ones. Modules without an η-MINE
    bound step the optimiser every call. Returns whether η moved.
    """
    bounds = [m for m in module.modules() if isinstance(m, EtaMINE)]
    if not all(b.eta_step_due(step) for b in bounds):
        return False
    for b in bounds:
        b.closed_form_step()
    if optimiser is not None:
        optimiser.step()
    return True
