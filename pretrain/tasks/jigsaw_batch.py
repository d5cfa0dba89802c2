"""Reading a jigsaw batch: checking its layout and encoding its patches (shared by CE and MI)."""
from __future__ import annotations

import torch

from .base import Task, require


def encode_patches(task: Task, batch: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """batch["patches"] [P, 9, 3, h, w] (scrambled order), batch["perm_index"] [P]
    -> (features [P, 9, feature_dim], perm_index [P] long). All P·9 patches go through the encoder
    in one call (BN statistics over the whole batch)."""
    patches = require(batch, "patches", 5, kind)
    perm_index = require(batch, "perm_index", 1, kind).long()
    n_puzzles, n_patches = patches.shape[:2]
    if perm_index.shape[0] != n_puzzles:
        raise ValueError(f"task {kind!r}: perm_index has {perm_index.shape[0]} entries for {n_puzzles} puzzles")
    flat = task.encoder_input(patches.flatten(0, 1))
    features = task.encoder(flat).reshape(n_puzzles, n_patches, -1)
    return features, perm_index
