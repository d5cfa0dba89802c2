"""faiss weighted kNN against a brute-force cosine kNN written out with plain loops in NumPy."""
import numpy as np
import pytest
import torch

from eval.knn import cosine_neighbours, knn_accuracy, knn_votes


def brute_force_knn_votes(train, train_labels, query, num_classes, k, temperature):
    """Slow, obvious copy: cosine to every train row, sort, weight the k best by exp(cos / T)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    votes = np.zeros((len(query), num_classes))
    neighbours = []
    for q, row in enumerate(query):
        cos = np.array([float(np.dot(row, t)) for t in train])
        best = np.argsort(-cos, kind="stable")[:k]
        neighbours.append(best)
        for j in best:
            votes[q, train_labels[j]] += np.exp(cos[j] / temperature)
    return votes, np.array(neighbours)


@pytest.fixture
def clusters():
    g = torch.Generator().manual_seed(0)
    num_classes, dim = 7, 16
    centres = torch.randn(num_classes, dim, generator=g)
    train_labels = torch.randint(0, num_classes, (300,), generator=g)
    test_labels = torch.randint(0, num_classes, (80,), generator=g)
    train = centres[train_labels] + 1.2 * torch.randn(300, dim, generator=g)
    test = centres[test_labels] + 1.2 * torch.randn(80, dim, generator=g)
    return train, train_labels, test, test_labels, num_classes


def test_faiss_neighbours_and_votes_equal_brute_force(clusters):
    train, train_labels, test, _, num_classes = clusters
    k, temperature = 20, 0.07
    want_votes, want_idx = brute_force_knn_votes(train.numpy(), train_labels.numpy(), test.numpy(), num_classes, k, temperature)
    sim, idx = cosine_neighbours(train, test, k)
    assert idx.shape == (80, k)
    assert np.array_equal(idx.numpy(), want_idx)
    votes = knn_votes(train, train_labels, test, num_classes, k, temperature)
    np.testing.assert_allclose(votes.numpy(), want_votes, rtol=1e-4)


def test_knn_accuracy_matches_brute_force_counts(clusters):
    train, train_labels, test, test_labels, num_classes = clusters
    want_votes, _ = brute_force_knn_votes(train.numpy(), train_labels.numpy(), test.numpy(), num_classes, 20, 0.07)
    order = np.argsort(-want_votes, axis=1)
    y = test_labels.numpy()
    want_top1 = 100.0 * np.mean(order[:, 0] == y)
    want_top5 = 100.0 * np.mean([y[i] in order[i, :5] for i in range(len(y))])
    got = knn_accuracy(train, train_labels, test, test_labels, num_classes)
    assert got["top1"] == pytest.approx(want_top1)
    assert got["top5"] == pytest.approx(want_top5)
    assert 40.0 < got["top1"] < 100.0  # separable-ish clusters: well above the 14% chance


def test_k_above_train_size_is_clamped_and_bad_shapes_raise():
    train, labels = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    sim, idx = cosine_neighbours(train, torch.randn(3, 4), 20)
    assert idx.shape == (3, 5)
    with pytest.raises(ValueError, match="features"):
        cosine_neighbours(train, torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="train_labels"):
        knn_votes(train, labels[:4], torch.randn(3, 4), 2)


def test_every_k_from_one_search_equals_a_search_per_k(clusters):
    """kNN at k = 10, 20, 100, 200 from one faiss search at k = 200 equals a search for each k."""
    from eval.topk import topk_accuracy

    train, train_labels, test, test_labels, num_classes = clusters
    got = knn_accuracy(train, train_labels, test, test_labels, num_classes, k=20, temperature=0.1, ks=(10, 20, 100, 200))
    assert sorted(got["by_k"], key=int) == ["10", "20", "100", "200"]
    for k in (10, 20, 100, 200):
        alone = topk_accuracy(knn_votes(train, train_labels, test, num_classes, k, 0.1), test_labels, (1, 5))
        assert got["by_k"][str(k)] == {"top1": alone[1], "top5": alone[5]}
    assert (got["top1"], got["top5"]) == (got["by_k"]["20"]["top1"], got["by_k"]["20"]["top5"])
    assert got["by_k"]["10"] != got["by_k"]["200"]  # the k's really vote differently here
