"""Linear probe: top-k counting, the probe itself, the frozen-encoder check, the feature cache and
checkpoints end to end."""
import numpy as np
import pytest
import torch

from eval.probe import train_linear_probe
from eval.topk import topk_accuracy, topk_correct


def brute_force_topk(scores, labels, k):
    """Count by hand: a sample is right when fewer than k classes score strictly above its label
    (scores are continuous random numbers, so there are no ties)."""
    correct = 0
    for row, y in zip(scores.tolist(), labels.tolist()):
        above = sum(1 for s in row if s > row[y])
        correct += above < k
    return correct


@pytest.mark.parametrize("num_classes", [3, 10, 37])
def test_topk_equals_brute_force_count(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    scores = torch.randn(500, num_classes, generator=g)
    labels = torch.randint(0, num_classes, (500,), generator=g)
    got = topk_correct(scores, labels, (1, 5, 10))
    for k in (1, 5, 10):
        assert got[k] == brute_force_topk(scores, labels, k)
    acc = topk_accuracy(scores, labels, (1, 5))
    assert acc[1] == pytest.approx(100.0 * got[1] / 500)
    if num_classes <= 10:
        assert got[10] == 500  # k >= C: every label is in the top k


def test_topk_rejects_bad_shapes():
    with pytest.raises(ValueError, match="scores"):
        topk_correct(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        topk_correct(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), (0,))


def _separable(n, num_classes=5, dim=20, seed=0):
    """Points around well-separated class centres: a linear classifier can get every one right."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(num_classes, dim)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=g), labels


def test_probe_separates_separable_features():
    x, y = _separable(600)
    xt, yt = _separable(400, seed=1)
    res = train_linear_probe(x, y, xt, yt, 5, epochs=8, seed=0, lr=5e-2, batch_size=100, progress=False)
    assert res["top1"] >= 99.0
    assert res["top5"] == 100.0


def test_probe_is_at_chance_on_shuffled_labels():
    # Labels from a random linear map of Gaussian features: learnable as they are (>= 85%), but once the
    # train labels are shuffled they carry no information, so test accuracy falls to chance (20%).
    # (Clustered features would not do here: the probe would map each cluster to the label that
    # happens to be most frequent in it after the shuffle, which is right or wrong for a whole cluster.)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, 5, generator=g)
    x, xt = torch.randn(1000, 20, generator=g), torch.randn(2000, 20, generator=g)
    y, yt = (x @ w).argmax(1), (xt @ w).argmax(1)
    shuffled = y[torch.randperm(1000, generator=g)]
    kw = dict(epochs=8, seed=0, lr=5e-2, batch_size=100, progress=False)
    assert train_linear_probe(x, y, xt, yt, 5, **kw)["top1"] >= 85.0
    assert 12.0 <= train_linear_probe(x, shuffled, xt, yt, 5, **kw)["top1"] <= 30.0


def test_probe_is_reproducible_per_seed_and_differs_across_seeds():
    x, y = _separable(300)
    xt, yt = _separable(300, seed=1)
    kw = dict(epochs=2, lr=1e-3, batch_size=100, progress=False)
    a = train_linear_probe(x, y, xt, yt, 5, seed=0, **kw)
    b = train_linear_probe(x, y, xt, yt, 5, seed=0, **kw)
    c = train_linear_probe(x, y, xt, yt, 5, seed=1, **kw)
    assert a == b
    assert a["train_loss"] != c["train_loss"]
