"""The jigsaw CE classifier ("descrambler", paper Appendix D): patch features -> permutation logits.

    per patch: linear 2048 → 512;  concatenate the 9 → 4608;  linear → 512, BN, ReLU, dropout;
    linear 512 → 100 (one logit per permutation of the set).

The paper puts no nonlinearity between the per-patch and the joint projection; neither do we.
"""
from __future__ import annotations

import torch
from torch import nn

from data_prep.jigsaw import NUM_PERMUTATIONS


class Descrambler(nn.Module):
    """Permutation classifier on the features of a puzzle's patches.

    Args:
        feature_dim: encoder features per patch (2048 for ResNet50).
        num_patches: patches per puzzle (9).
        num_permutations: size of the permutation set (100).
        patch_dim: per-patch projection (512). hidden_dim: joint projection (512).
        dropout: dropout before the last layer (the paper gives no rate; 0.5 as Noroozi & Favaro).
    """

    def __init__(self, feature_dim: int, num_patches: int = 9, num_permutations: int = NUM_PERMUTATIONS,
                 patch_dim: int = 512, hidden_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.num_patches = num_patches
        self.patch_proj = nn.Linear(feature_dim, patch_dim)
        self.head = nn.Sequential(
            nn.Linear(num_patches * patch_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_permutations),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [P, 9, feature_dim] (patches in scrambled order) -> logits [P, num_permutations]."""
        if features.dim() != 3 or features.shape[1] != self.num_patches:
            raise ValueError(f"descrambler expects features [P, {self.num_patches}, D], got {tuple(features.shape)}")
        return self.head(self.patch_proj(features).flatten(1))
