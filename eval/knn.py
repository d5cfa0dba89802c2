"""Weighted k-nearest-neighbour classification on frozen features, with a faiss cosine index.

A quick second read of an encoder beside the linear probe: no training, one pass over the test
features. Votes are weighted by exp(cosine / T) as in Wu et al. 2018 and DINO's `eval_knn.py`, so
close neighbours count more than the 20th.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from eval.topk import topk_accuracy


def _as_unit_rows(x: torch.Tensor) -> np.ndarray:
    """[N, D] tensor -> contiguous float32 NumPy array with unit L2 rows (inner product = cosine)."""
    return np.ascontiguousarray(F.normalize(x.detach().float(), dim=1).cpu().numpy())


@torch.no_grad()
def cosine_neighbours(train_features: torch.Tensor, query_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k train rows most cosine-similar to each query row, found with a faiss flat inner-product index.

    train_features: [N, D]; query_features: [Q, D]. Returns (similarity [Q, k'] float32, index [Q, k']
    int64), best first, with k' = min(k, N).
    """
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"cosine_neighbours: want [N, D] and [Q, D] features, got {tuple(train_features.shape)} and {tuple(query_features.shape)}"
        )
    k = min(k, train_features.shape[0])
    index = faiss.IndexFlatIP(train_features.shape[1])
    index.add(_as_unit_rows(train_features))
    sim, idx = index.search(_as_unit_rows(query_features), k)
    return torch.from_numpy(sim), torch.from_numpy(idx).long()


@torch.no_grad()
def knn_votes(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Class votes of the k nearest train samples, each weighted by exp(cosine / temperature).

    train_features: [N, D], train_labels: [N] int64, query_features: [Q, D]. Returns votes [Q, C].
    """
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"knn_votes: train_labels must be [{train_features.shape[0]}], got {tuple(train_labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"knn_votes: temperature must be > 0, got {temperature}")
    sim, idx = cosine_neighbours(train_features, query_features, k)
    weights = (sim.double() / temperature).exp()  # [Q, k]; double: exp(1/0.07) ~ 1.6e6 is fine, sums stay exact-ish
    votes = torch.zeros(query_features.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels.cpu()[idx], weights)
    return votes


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted kNN top-1 and top-5 accuracy (percent) of test samples against the train features.

    train_features: [N, D], train_labels: [N], test_features: [Q, D], test_labels: [Q].
    Returns {"k", "temperature", "top1", "top5"}.
    """
    votes = knn_votes(train_features, train_labels, test_features, num_classes, k, temperature)
    acc = topk_accuracy(votes, test_labels.cpu(), (1, 5))
    return {"k": k, "temperature": temperature, "top1": acc[1], "top5": acc[5]}
