"""Top-k accuracy from class scores."""
from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, int]:
    """Count the samples whose label is among the k highest scores, for each k.

    scores: [N, C] class scores (logits, votes, ...). labels: [N] int64 in [0, C).
    Returns {k: number of correct samples}. A k at or above C counts every sample (every label is
    among the top C), which is the usual definition, so top-10 on a 10-class task is 100%.
    """
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"topk_correct: want scores [N, C] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if any(k < 1 for k in ks):
        raise ValueError(f"topk_correct: every k must be >= 1, got {list(ks)}")
    num_classes = scores.shape[1]
    kmax = min(max(ks), num_classes)
    top = scores.topk(kmax, dim=1).indices  # [N, kmax], best first
    hit = top.eq(labels.view(-1, 1))  # [N, kmax]; at most one True per row
    return {k: int(hit[:, : min(k, num_classes)].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Top-k accuracy in percent for each k. scores: [N, C], labels: [N]. Returns {k: percent}."""
    n = labels.shape[0]
    if n == 0:
        raise ValueError("topk_accuracy: no samples to score")
    return {k: 100.0 * c / n for k, c in topk_correct(scores, labels, ks).items()}
