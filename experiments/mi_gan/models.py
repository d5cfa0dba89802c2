"""Small MLPs for the MI-regularised GAN on 2-D data (paper §5, Fig. 3b).

They return samples, logits or critic scores, never losses: the GAN and MI losses live in
``experiments.mi_gan`` and ``pretrain.estimators``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(d_in: int, hidden: int, depth: int, d_out: int) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with ReLU, then a linear map to ``d_out``."""
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """InfoGAN-style conditional generator G(z, c): noise z and a categorical code c -> a 2-D point.

    The code enters as a one-hot vector next to the noise. Without an MI term nothing ties the
    output to c, so the same network serves as the unconditional baseline.
    """

    def __init__(self, noise_dim: int, n_codes: int, hidden: int = 128, depth: int = 3, d_out: int = 2):
        super().__init__()
        self.noise_dim, self.n_codes = noise_dim, n_codes
        self.net = mlp(noise_dim + n_codes, hidden, depth, d_out)

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """z [N, noise_dim] float, codes [N] long in [0, n_codes) -> samples [N, d_out]."""
        return self.net(torch.cat([z, F.one_hot(codes, self.n_codes).to(z.dtype)], dim=1))


class Discriminator(nn.Module):
    """MLP discriminator: points [N, d_in] -> real/fake logits [N]."""

    def __init__(self, d_in: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.net = mlp(d_in, hidden, depth, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d_in] -> logits [N]."""
        return self.net(x).squeeze(1)


class StatisticsNetwork(nn.Module):
    """MLP witness T(x, c) for a categorical code: one output per code value.

    ``forward(x)[i, k]`` is T(x_i, c = k). Scoring every code in one pass gives the marginal term
    E_{p(x)p(c)} e^T exactly over c (c is uniform), at the cost of one forward per sample.
    """

    def __init__(self, n_codes: int, d_in: int = 2, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.n_codes = n_codes
        self.net = mlp(d_in, hidden, depth, n_codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d_in] -> scores [N, n_codes], entry (i, k) = T(x_i, k)."""
        return self.net(x)
