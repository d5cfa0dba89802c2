"""η-MINE-convex (paper §3): a linear witness f = ⟨w, Φ(x, y)⟩ on fixed features Φ.

With Φ fixed (e.g. the last hidden layer of a trained η-MINE critic) the η-MINE loss

    L(w, η) = e^{-η} · mean_marg e^{⟨w, Φ⟩} − mean_joint ⟨w, Φ⟩ + η − 1

is jointly convex in (w, η) (exp of an affine function, plus affine terms). Minimising over η in
closed form (η = log mean_marg e^{⟨w, Φ⟩}) leaves the DV objective in w, a log-sum-exp of affine
functions minus a linear term: smooth and convex, solved here to a global optimum by L-BFGS with a
strong-Wolfe line search in float64, with an optional ridge term ``l2/2·|w|²``.
The bound is then reported on held-out features with the fitted (w, η), not re-optimised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ConvexFit:
    """Fitted linear witness ``w`` [K], scalar ``eta``, the training bound and solver diagnostics."""

    w: torch.Tensor
    eta: float
    train_mi: float
    grad_norm: float
    iterations: int


def _check(phi_joint: torch.Tensor, phi_marg: torch.Tensor) -> None:
    if phi_joint.dim() != 2 or phi_marg.dim() != 2 or phi_joint.shape[1] != phi_marg.shape[1]:
        raise ValueError(
            f"features must be [N_joint, K] and [N_marg, K] with the same K, got {tuple(phi_joint.shape)} and {tuple(phi_marg.shape)}"
        )


def eta_mine_bound(w: torch.Tensor, eta: float | torch.Tensor, phi_joint: torch.Tensor, phi_marg: torch.Tensor) -> torch.Tensor:
    """−L(w, η) on features: phi_joint [Nj, K], phi_marg [Nm, K], w [K] -> scalar (nats)."""
    eta = torch.as_tensor(eta, dtype=phi_marg.dtype)
    log_marg = torch.logsumexp(phi_marg @ w, dim=0) - math.log(phi_marg.shape[0])
    return (phi_joint @ w).mean() - torch.exp(log_marg - eta) - eta + 1.0


def fit_convex(
    phi_joint: torch.Tensor, phi_marg: torch.Tensor, *, l2: float = 0.0, max_iter: int = 500, tol: float = 1e-10
) -> ConvexFit:
    """Fit (w, η) minimising the η-MINE loss on features phi_joint [Nj, K], phi_marg [Nm, K]."""
    _check(phi_joint, phi_marg)
    pj, pm = phi_joint.detach().double(), phi_marg.detach().double()
    w = torch.zeros(pj.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [w], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        log_marg = torch.logsumexp(pm @ w, dim=0) - math.log(pm.shape[0])
        return log_marg - (pj @ w).mean() + 0.5 * l2 * (w * w).sum()

    def closure():
        optimiser.zero_grad()
        value = objective()
        value.backward()
        return value

    optimiser.step(closure)
    closure()  # w.grad at the final w (strong-Wolfe's line search may end on another point)
    w_final = w.detach()
    eta = float(torch.logsumexp(pm @ w_final, dim=0) - math.log(pm.shape[0]))
    iterations = optimiser.state[optimiser._params[0]].get("n_iter", 0)
    return ConvexFit(
        w=w_final,
        eta=eta,
        train_mi=float(eta_mine_bound(w_final, eta, pj, pm)),
        grad_norm=float(w.grad.norm()),
        iterations=int(iterations),
    )


def evaluate_convex(fit: ConvexFit, phi_joint: torch.Tensor, phi_marg: torch.Tensor) -> float:
    """The η-MINE bound (nats) of a fitted witness on held-out features [Nj, K], [Nm, K]."""
    _check(phi_joint, phi_marg)
    return float(eta_mine_bound(fit.w, fit.eta, phi_joint.detach().double(), phi_marg.detach().double()))
