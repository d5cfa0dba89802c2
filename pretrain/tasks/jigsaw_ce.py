"""Jigsaw with cross-entropy (Noroozi & Favaro 2016; paper Appendix D, Fig. 5a).

The encoder embeds each of a puzzle's 9 patches; the descrambler predicts which of the 100
permutations scrambled them; the loss is the cross-entropy over the permutation index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.jigsaw import NUM_PERMUTATIONS
from pretrain.models import Descrambler

from .base import Task, require
from .jigsaw_batch import encode_patches

KIND = "jigsaw-ce"


class JigsawCE(Task):
    """CE jigsaw task.

    Args:
        encoder: from ``pretrain.models.build_encoder`` (ResNet50: 2048 features per patch).
        num_permutations: size of the permutation set (100).
        **head_kwargs: ``Descrambler`` options (``patch_dim``, ``hidden_dim``, ``dropout``, ``num_patches``).
    """

    def __init__(self, encoder: nn.Module, num_permutations: int = NUM_PERMUTATIONS, **head_kwargs):
        super().__init__(encoder)
        self.num_permutations = num_permutations
        self.descrambler = Descrambler(encoder.feature_dim, num_permutations=num_permutations, **head_kwargs)

    def check_and_derive(self, batch: dict) -> dict:
        perm_index = require(batch, "perm_index", 1, KIND)
        if perm_index.min() < 0 or perm_index.max() >= self.num_permutations:
            raise ValueError(f"task {KIND!r}: perm_index outside 0..{self.num_permutations - 1}; does num_permutations match the data?")
        return batch

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``patches`` [P, 9, 3, h, w], ``perm_index`` [P] ->
        {"loss": CE (grad), "acc": fraction of puzzles whose argmax is the true permutation}."""
        features, perm_index = encode_patches(self, self.host_prepare(batch), KIND)
        logits = self.descrambler(features)
        loss = F.cross_entropy(logits.float(), perm_index)
        acc = (logits.detach().argmax(dim=1) == perm_index).float().mean()
        return {"loss": loss, "acc": acc}
