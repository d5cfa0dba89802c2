"""Weighted k-nearest-neighbour classification on frozen features, with a faiss cosine index.

A quick second read of an encoder beside the linear probe: no training, one pass over the test
features. Votes are weighted by exp(cosine / T) as in Wu et al. 2018 and DINO's `eval_knn.py`, so
close neighbours count more than the 20th.
"""
from __future__ import annotations

from collections.abc import Sequence

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
def votes_from_neighbours(sim: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, k: int, temperature: float) -> torch.Tensor:
    """Class votes of the first k of the neighbours found (best first), each weighted by exp(cos / T).

    sim: [Q, K] cosine similarities, neighbour_labels: [Q, K] int64, k <= K. Returns votes [Q, C] float64.
    """
    if temperature <= 0:
        raise ValueError(f"knn: temperature must be > 0, got {temperature}")
    weights = (sim[:, :k].double() / temperature).exp()  # double: exp(1/0.07) ~ 1.6e6 is fine, sums stay exact-ish
    votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels[:, :k], weights)
    return votes


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
    sim, neighbour_labels = labelled_neighbours(train_features, train_labels, query_features, k, "knn_votes")
    return votes_from_neighbours(sim, neighbour_labels, num_classes, sim.shape[1], temperature)


def labelled_neighbours(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                        k: int, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest train samples of every query (:func:`cosine_neighbours`) and their labels.

    train_features: [N, D], train_labels: [N] int64, query_features: [Q, D]. Returns sim [Q, K] and
    neighbour labels [Q, K], K = min(k, N); a ValueError naming ``caller`` when the labels are not [N]."""
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"{caller}: train_labels must be [{train_features.shape[0]}], got {tuple(train_labels.shape)}")
    sim, idx = cosine_neighbours(train_features, query_features, k)
    return sim, train_labels.cpu()[idx]


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    ks: Sequence[int] = (),
) -> dict:
    """Weighted kNN top-1 and top-5 accuracy (percent) of test samples against the train features,
    for `k` and for every k of `ks`, from one faiss search at the largest of them.

    train_features: [N, D], train_labels: [N], test_features: [Q, D], test_labels: [Q].
    Returns {"k", "temperature", "top1", "top5" (at `k`), "by_k": {str(k): {"top1", "top5"}} (every k)}.
    A k above N votes with all N train samples.
    """
    all_ks = sorted({int(k), *(int(j) for j in ks)})
    if all_ks[0] < 1:
        raise ValueError(f"knn: every k must be >= 1, got {all_ks}")
    sim, neighbour_labels = labelled_neighbours(train_features, train_labels, test_features, all_ks[-1], "knn_accuracy")  # the one search
    by_k = {}
    for j in all_ks:
        votes = votes_from_neighbours(sim, neighbour_labels, num_classes, min(j, sim.shape[1]), temperature)
        acc = topk_accuracy(votes, test_labels.cpu(), (1, 5))
        by_k[str(j)] = {"top1": acc[1], "top5": acc[5]}
    return {"k": k, "temperature": temperature, **by_k[str(k)], "by_k": by_k}
