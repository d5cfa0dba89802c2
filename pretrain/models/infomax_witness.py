"""The Deep InfoMax witness (paper §5, Fig. 4b): scores between a shallow and a deeper layer.

The paper passes the features of layer l (x') and layer k (y') "through additional trainable neural
network layers, whose job is to build a classifier f(x', y')", without giving them. Ours, one branch
per layer:

    map [B, C, H, W] → 1×1 conv C→reduce_channels, ReLU → flatten → linear → hidden, ReLU
                     → linear → embed_dim
    f(x_i, y_j) = ⟨a_i, b_j⟩ / sqrt(embed_dim)

The 1×1 convolution keeps every location (the witness can match where things are) while keeping
the flattened vector small; the 1/sqrt(embed_dim) scaling keeps the scores of order one at
initialisation so that e^f neither vanishes nor overflows early in training.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _Branch(nn.Module):
    def __init__(self, shape: tuple[int, int, int], reduce_channels: int, hidden_dim: int, embed_dim: int):
        super().__init__()
        c, h, w = shape
        self.reduce = nn.Sequential(nn.Conv2d(c, reduce_channels, kernel_size=1), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(
            nn.Linear(reduce_channels * h * w, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim)
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reduce(fmap).flatten(1))


class InfoMaxWitness(nn.Module):
    """f(x', y') between two feature maps of the same encoder.

    Args:
        shape_l, shape_k: (channels, height, width) of layer l's and layer k's maps.
        reduce_channels: channels after each branch's 1×1 conv (32).
        hidden_dim: hidden width of each branch's MLP (512). embed_dim: common dimension (128).
        log_baseline: also build a baseline η(y') on the layer-k embedding (for ``a-mine``).
    """

    def __init__(self, shape_l: tuple[int, int, int], shape_k: tuple[int, int, int], reduce_channels: int = 32,
                 hidden_dim: int = 512, embed_dim: int = 128, log_baseline: bool = False):
        super().__init__()
        self.x_branch = _Branch(shape_l, reduce_channels, hidden_dim, embed_dim)
        self.y_branch = _Branch(shape_k, reduce_channels, hidden_dim, embed_dim)
        self.scale = 1.0 / math.sqrt(embed_dim)
        self.baseline = nn.Linear(embed_dim, 1) if log_baseline else None

    def embed(self, map_l: torch.Tensor, map_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """map_l [B, C_l, H_l, W_l], map_k [B, C_k, H_k, W_k] -> (a [B, E], b [B, E])."""
        return self.x_branch(map_l), self.y_branch(map_k)

    def log_baseline(self, b: torch.Tensor) -> torch.Tensor:
        """Layer-k embeddings b [B, E] -> η(y'_j) [B] (needs ``log_baseline=True``)."""
        if self.baseline is None:
            raise ValueError("this witness was built without log_baseline=True")
        return self.baseline(b).squeeze(1)

    def scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a [B, E], b [B', E] -> scores [B, B'] float32, entry (i, j) = f(x'_i, y'_j); the diagonal is joint."""
        with torch.autocast(device_type=a.device.type, enabled=False):  # e^f needs float32 scores, also under bf16
            return self.scale * a.float() @ b.float().T

    def forward(self, map_l: torch.Tensor, map_k: torch.Tensor) -> torch.Tensor:
        """map_l, map_k of the same B images -> scores [B, B] (diagonal: same image)."""
        return self.scores(*self.embed(map_l, map_k))
