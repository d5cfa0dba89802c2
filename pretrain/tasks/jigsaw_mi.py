"""Jigsaw with mutual information (paper Appendix D, Fig. 5b): maximise I(E(x_π); π).

A batch holds 10 images × 16 permutations = 160 puzzles. The witness scores every puzzle against
the 16 permutations of the batch: scores [160, 16]. Joint pairs: each puzzle with the permutation
that scrambled it (160). Marginal pairs: each puzzle with one other permutation of the batch,
drawn uniformly among the 15 others (160, as many as joint pairs, as the paper). The draw uses a
generator seeded from the batch content (image and permutation indices), so the same batch always
gives the same pairs, on any device and after a resume.
"""
from __future__ import annotations

import torch
from torch import nn

from data_prep.jigsaw import NUM_PERMUTATIONS
from pretrain.estimators.base import masks_checked
from pretrain.models import JigsawWitness

from .base import Task, require
from .jigsaw_batch import encode_patches

KIND = "jigsaw-mi"


def jigsaw_masks(perm_slot: torch.Tensor, num_slots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """perm_slot [P] (column of each puzzle's own permutation) -> (pos_mask, neg_mask), each [P, M] bool.

    pos_mask has one True per row at perm_slot; neg_mask one True per row at another column drawn
    uniformly with ``torch.Generator().manual_seed(seed)``.
    """
    if num_slots < 2:
        raise ValueError(f"jigsaw-mi needs at least 2 permutations per batch for marginal pairs, got {num_slots}")
    n = perm_slot.shape[0]
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_slots, (n,), generator=gen).to(perm_slot.device)
    rows = torch.arange(n, device=perm_slot.device)
    pos = torch.zeros(n, num_slots, dtype=torch.bool, device=perm_slot.device)
    neg = torch.zeros_like(pos)
    pos[rows, perm_slot] = True
    neg[rows, (perm_slot + offset) % num_slots] = True
    return pos, neg


def batch_seed(image_index: torch.Tensor, perm_index: torch.Tensor) -> int:
    """A seed determined by the batch content (Python's hash of int tuples is not salted)."""
    return hash((tuple(image_index.tolist()), tuple(perm_index.tolist()))) & (2**63 - 1)


class JigsawMI(Task):
    """MI jigsaw task with any registered bound.

    Args:
        encoder: from ``pretrain.models.build_encoder``.
        estimator: the bound (from ``pretrain.estimators.build``); a-MINE also gets the witness's
            per-permutation baseline η(y).
        num_permutations: size of the permutation set (length of the one-hot y).
        **witness_kwargs: ``JigsawWitness`` options (``embed_dim``, ``channels``, ``score_scale``).
    """

    def __init__(self, encoder: nn.Module, estimator: nn.Module, takes_baseline: bool = False,
                 num_permutations: int = NUM_PERMUTATIONS, **witness_kwargs):
        super().__init__(encoder, estimator)
        self.num_permutations = num_permutations
        self.takes_baseline = takes_baseline
        self.witness = JigsawWitness(encoder.feature_dim, num_permutations=num_permutations,
                                     log_baseline=takes_baseline, **witness_kwargs)

    def check_and_derive(self, batch: dict) -> dict:
        """Check the permutation bookkeeping and add the pair masks ``pos_mask``, ``neg_mask`` [P, M]."""
        perm_index = require(batch, "perm_index", 1, KIND).long()
        batch_perms = require(batch, "batch_perms", 1, KIND).long()
        perm_slot = require(batch, "perm_slot", 1, KIND).long()
        image_index = require(batch, "image_index", 1, KIND)
        if perm_slot.shape != perm_index.shape or image_index.shape != perm_index.shape:
            raise ValueError(f"task {KIND!r}: perm_slot, image_index and perm_index must all be [P] = [{perm_index.shape[0]}]")
        num_slots = batch_perms.shape[0]
        if perm_slot.min() < 0 or perm_slot.max() >= num_slots or not torch.equal(batch_perms[perm_slot], perm_index):
            raise ValueError(f"task {KIND!r}: batch_perms[perm_slot] must equal perm_index for every puzzle")
        if batch_perms.unique().numel() != num_slots:
            raise ValueError(f"task {KIND!r}: batch_perms repeats a permutation, so a marginal pair could be joint")
        if batch_perms.min() < 0 or batch_perms.max() >= self.num_permutations:
            raise ValueError(f"task {KIND!r}: batch_perms outside 0..{self.num_permutations - 1}; does num_permutations match the data?")
        pos, neg = jigsaw_masks(perm_slot, num_slots, batch_seed(image_index, perm_index))
        return {**batch, "pos_mask": pos, "neg_mask": neg}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``patches`` [P, 9, 3, h, w], ``perm_index`` [P], ``batch_perms`` [M], ``perm_slot`` [P],
        ``image_index`` [P] (and, after :meth:`host_prepare`, ``pos_mask``, ``neg_mask`` [P, M]) ->
        {"loss", "mi", "acc", and "eta", "normaliser" for η-MINE}.

        ``acc``: fraction of puzzles whose highest score over the M batch permutations is their own.
        """
        batch = self.host_prepare(batch)
        features, _ = encode_patches(self, batch, KIND)
        batch_perms = batch["batch_perms"].long()
        scores = self.witness(features, batch_perms).float()
        extra = {"log_baseline": self.witness.log_baseline(batch_perms).float()} if self.takes_baseline else {}
        with masks_checked():  # by check_and_derive, on the host
            loss, mi = self.estimator(scores, batch["pos_mask"], batch["neg_mask"], **extra)
        acc = (scores.detach().argmax(dim=1) == batch["perm_slot"]).float().mean()
        return {"loss": loss, "mi": mi, "acc": acc, **self.estimator_metrics()}
