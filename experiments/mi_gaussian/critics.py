"""Critic networks for the Gaussian MI benchmark, batched over independent copies.

Every estimator (and, in the paper protocol, every repeated run) trains its own critic. Instead of
C separate networks we keep one set of weights with a leading copy axis, [C, in, out], and run all
of them with ``torch.bmm``: the Python and dispatch overhead of a step is then paid once, not C
times. Copy c sees only its own inputs and weights, so this equals C independent networks trained
by an element-wise optimiser such as Adam (``tests/experiments/test_mi_gaussian.py`` checks it).

Two critics, as in Poole et al. (2019):
- ``ConcatCritic``: f(x, y) = MLP([x; y]) evaluated on every (x_i, y_j) pair. The first layer is
  split, W [x; y] = W_x x + W_y y, so it costs N + M rows instead of N·M; deeper layers see N·M rows.
- ``SeparableCritic``: f(x, y) = g(x)ᵀ h(y), two MLP towers; N + M rows, one batched matmul.

Both return scores [C, N, M] and, for η-MINE-convex, pair features Φ [C, P, K] of aligned pairs
(the last hidden layer for the concat critic, g(x) ⊙ h(y) for the separable one, so that the
trained critic is f = ⟨w, Φ⟩ + b for some w, b).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _uniform(copies: int, fan_in: int, *shape: int) -> nn.Parameter:
    """nn.Linear's default initialisation, U(−1/√fan_in, 1/√fan_in), for each of ``copies``."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(copies, *shape).uniform_(-bound, bound))


def _sel(p: torch.Tensor, copies: slice | None) -> torch.Tensor:
    return p if copies is None else p[copies]


class BatchedMLP(nn.Module):
    """``copies`` independent MLPs in → hidden (× ``layers``, ReLU) → out.

    forward: x [C, N, in] -> [C, N, out]; copy c uses only its own weights.
    """

    def __init__(self, copies: int, d_in: int, hidden: int, d_out: int, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP needs at least one hidden layer, got layers={layers}")
        sizes = [d_in] + [hidden] * layers + [d_out]
        self.weights = nn.ParameterList(_uniform(copies, a, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(_uniform(copies, a, 1, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """x [C, N, in] -> [C, N, out]; ``copies`` selects a slice of the copies (x then has that many)."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(_sel(b, copies), x, _sel(w, copies))
            if i < last:
                x = torch.relu(x)
        return x


class ConcatCritic(nn.Module):
    """``copies`` joint critics f(x, y) = MLP([x; y]) (``layers`` hidden layers of ``hidden``, ReLU)."""

    def __init__(self, copies: int, dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the concat critic needs at least one hidden layer, got layers={layers}")
        self.dim = dim
        self.w_x = _uniform(copies, 2 * dim, dim, hidden)
        self.w_y = _uniform(copies, 2 * dim, dim, hidden)
        self.b_in = _uniform(copies, 2 * dim, 1, hidden)
        self.w_hidden = nn.ParameterList(_uniform(copies, hidden, hidden, hidden) for _ in range(layers - 1))
        self.b_hidden = nn.ParameterList(_uniform(copies, hidden, 1, hidden) for _ in range(layers - 1))
        self.w_out = _uniform(copies, hidden, hidden, 1)
        self.b_out = _uniform(copies, hidden, 1, 1)

    def _deep(self, h: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """First-layer activations [C, P, hidden] -> last hidden layer [C, P, hidden]."""
        for w, b in zip(self.w_hidden, self.b_hidden):
            h = torch.relu(torch.baddbmm(_sel(b, copies), h, _sel(w, copies)))
        return h

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [C, N, dim], y [C, M, dim] -> f(x_i, y_j) for every pair, [C, N, M]."""
        c, n, m = x.shape[0], x.shape[1], y.shape[1]
        ax = torch.bmm(x, self.w_x)  # [C, N, H]
        ay = torch.baddbmm(self.b_in, y, self.w_y)  # [C, M, H]
        h = torch.relu(ax[:, :, None, :] + ay[:, None, :, :]).reshape(c, n * m, -1)
        return torch.baddbmm(self.b_out, self._deep(h), self.w_out).reshape(c, n, m)

    def pair_features(self, x: torch.Tensor, y: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """Aligned pairs x [C, P, dim], y [C, P, dim] -> last hidden layer Φ [C, P, hidden].

        ``copies`` selects a slice of the critics (x and y then hold that many)."""
        h = torch.relu(torch.bmm(x, _sel(self.w_x, copies)) + torch.baddbmm(_sel(self.b_in, copies), y, _sel(self.w_y, copies)))
        return self._deep(h, copies)

    def grid_features(self, x: torch.Tensor, y: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """Every pair of x [C, N, dim] and y [C, M, dim] -> last hidden layer Φ [C, N, M, hidden]."""
        c, n, m = x.shape[0], x.shape[1], y.shape[1]
        ax = torch.bmm(x, _sel(self.w_x, copies))
        ay = torch.baddbmm(_sel(self.b_in, copies), y, _sel(self.w_y, copies))
        h = torch.relu(ax[:, :, None, :] + ay[:, None, :, :]).reshape(c, n * m, -1)
        return self._deep(h, copies).reshape(c, n, m, -1)


class SeparableCritic(nn.Module):
    """``copies`` separable critics f(x, y) = g(x)ᵀ h(y), towers dim → hidden (× layers) → embed."""

    def __init__(self, copies: int, dim: int, hidden: int = 256, embed: int = 32, layers: int = 2):
        super().__init__()
        self.dim = dim
        self.g = BatchedMLP(copies, dim, hidden, embed, layers)
        self.h = BatchedMLP(copies, dim, hidden, embed, layers)

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [C, N, dim], y [C, M, dim] -> f(x_i, y_j) for every pair, [C, N, M]."""
        return torch.bmm(self.g(x), self.h(y).transpose(1, 2))

    def pair_features(self, x: torch.Tensor, y: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """Aligned pairs x [C, P, dim], y [C, P, dim] -> Φ = g(x) ⊙ h(y) [C, P, embed] (f = Σ_k Φ_k).

        ``copies`` selects a slice of the critics (x and y then hold that many)."""
        return self.g(x, copies) * self.h(y, copies)

    def grid_features(self, x: torch.Tensor, y: torch.Tensor, copies: slice | None = None) -> torch.Tensor:
        """Every pair of x [C, N, dim] and y [C, M, dim] -> Φ = g(x_i) ⊙ h(y_j) [C, N, M, embed]."""
        return self.g(x, copies)[:, :, None, :] * self.h(y, copies)[:, None, :, :]


def build_critic(architecture: str, copies: int, dim: int, hidden: int, embed: int = 32, layers: int = 2) -> nn.Module:
    """``architecture`` is ``concat`` or ``separable``; returns a critic with ``scores`` and ``pair_features``."""
    if architecture == "concat":
        return ConcatCritic(copies, dim, hidden, layers)
    if architecture == "separable":
        return SeparableCritic(copies, dim, hidden, embed, layers)
    raise ValueError(f"unknown critic {architecture!r}; choose concat or separable")
