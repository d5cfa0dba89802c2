"""Reading a jigsaw batch: checking its layout and encoding its patches (shared by CE and MI).

Two batch layouts are accepted:
- ``patches`` [P, 9, 3, h, w]: every puzzle's patches in scrambled order (P = images × perms);
- ``tiles`` [I, 9, 3, h, w] + ``perm_rows`` [M, 9] (+ ``image_index``, ``perm_slot`` [P]): each
  image's 9 tiles once, with the batch's M permutations (the streams' ``gather=False``).
A third, ``tiles_u8`` uint8 [I, 9, h, w, 3] + ``gray`` [I] (``data.augment_on=device``), is the second
before its per-patch work, done here on the batch's device. The second runs the encoder on the I·9 unique tiles and gathers their features into puzzles: the
same features and gradients as encoding all P·9 patches (each tile appears M times, so batch-norm's
batch mean and biased variance are the same too), for 1/M of the encoder's work (16× less with the
paper's 16 permutations per image).
"""
from __future__ import annotations

import torch

from .base import Task, require


def encode_patches(task: Task, batch: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """batch -> (features [P, 9, feature_dim] in scrambled order, perm_index [P] long).

    All patches (or unique tiles) go through the encoder in one call (BN statistics over the batch).
    """
    perm_index = require(batch, "perm_index", 1, kind).long()
    if "tiles_u8" in batch:  # data.augment_on=device: gray and standardise here, batched, on the device
        from data_prep.jigsaw import standardise

        tiles = standardise(require(batch, "tiles_u8", 5, kind), require(batch, "gray", 1, kind), sync_free=True)
        batch = {**batch, "tiles": tiles}
    if "tiles" in batch:
        tiles = require(batch, "tiles", 5, kind)
        perm_rows = require(batch, "perm_rows", 2, kind).long()
        image_index = require(batch, "image_index", 1, kind).long()
        perm_slot = require(batch, "perm_slot", 1, kind).long()
        n_images, n_tiles = tiles.shape[:2]
        if perm_rows.shape[1] != n_tiles or image_index.shape != perm_index.shape or perm_slot.shape != perm_index.shape:
            raise ValueError(f"task {kind!r}: tiles [I, {n_tiles}, ...] need perm_rows [M, {n_tiles}] and image_index, perm_slot of shape [P]")
        tile_features = task.encoder(task.encoder_input(tiles.flatten(0, 1))).reshape(n_images, n_tiles, -1)
        return tile_features[image_index[:, None], perm_rows[perm_slot]], perm_index
    patches = require(batch, "patches", 5, kind)
    n_puzzles, n_patches = patches.shape[:2]
    if perm_index.shape[0] != n_puzzles:
        raise ValueError(f"task {kind!r}: perm_index has {perm_index.shape[0]} entries for {n_puzzles} puzzles")
    flat = task.encoder_input(patches.flatten(0, 1))
    features = task.encoder(flat).reshape(n_puzzles, n_patches, -1)
    return features, perm_index
