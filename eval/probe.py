"""The linear classifier trained on frozen features (the paper's target task, Appendix D).

Pure functions of feature tensors and labels: the encoder never appears here, which is what makes
training on a feature cache exact (the paper's test-time crops are deterministic).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eval.topk import topk_accuracy
from console.progress import bar as progress_bar


def make_probe(feature_dim: int, num_classes: int, seed: int, lr: float = 1e-4, device: str | torch.device = "cpu") -> tuple[nn.Linear, torch.optim.Adam]:
    """A seeded linear layer feature_dim -> num_classes and its Adam (0.9, 0.999), no weight decay (paper, App. D)."""
    g = torch.Generator().manual_seed(seed)
    probe = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():  # nn.Linear's default init, but from our generator so each seed is reproducible
        bound = 1.0 / math.sqrt(feature_dim)
        probe.weight.copy_(torch.empty_like(probe.weight).uniform_(-bound, bound, generator=g))
        probe.bias.copy_(torch.empty_like(probe.bias).uniform_(-bound, bound, generator=g))
    probe = probe.to(device)
    return probe, torch.optim.Adam(probe.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


def probe_step(probe: nn.Linear, optimizer: torch.optim.Optimizer, features: torch.Tensor, labels: torch.Tensor) -> float:
    """One Adam step of cross-entropy on a batch. features: [B, D], labels: [B]. Returns the batch loss."""
    loss = F.cross_entropy(probe(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def probe_scores(probe: nn.Linear, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of the probe for features [N, D], in batches. Returns [N, C] on the CPU."""
    return torch.cat([probe(features[i : i + batch_size]).cpu() for i in range(0, features.shape[0], batch_size)])


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    seed: int,
    lr: float = 1e-4,
    batch_size: int = 256,
    shuffle: bool = True,
    ks: Sequence[int] = (1, 5, 10),
    device: str | torch.device | None = None,
    writer=None,
    progress: bool = True,
    desc: str = "probe",
) -> dict:
    """Train a linear classifier on fixed features and score it on the test features.

    train_features: [N, D] float, train_labels: [N] int64, test_features: [Q, D], test_labels: [Q].
    Each epoch visits the train set once in batches of `batch_size` (a fresh seeded order if
    `shuffle`); the reported accuracies are those after the last epoch (no model selection on the
    test set). `writer` (a TensorBoard SummaryWriter, optional) gets `probe/train_loss` and
    `probe/test_top1` once per epoch.

    Returns {"seed", "epochs", "top1", "top5", "top10" (percent, keyed "top{k}"), "train_loss",
    "history": {"train_loss": [epochs], "test_top1": [epochs]}}.
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train_linear_probe: want [N, D] and [Q, D] features, got {tuple(train_features.shape)} and {tuple(test_features.shape)}")
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("train_linear_probe: labels must be [N] and [Q], one per feature row")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"train_linear_probe: epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x, y = train_features.float().to(device), train_labels.long().to(device)
    xt, yt = test_features.float().to(device), test_labels.long().cpu()
    probe, opt = make_probe(x.shape[1], num_classes, seed, lr, device)
    order_gen = torch.Generator().manual_seed(seed + 1_000_003)  # batch order: independent of the init stream
    n = x.shape[0]
    bar = progress_bar(range(epochs), desc=desc, enabled=progress, leave=False)
    loss_epoch = float("nan")
    history = {"train_loss": [], "test_top1": []}
    for epoch in bar:
        order = torch.randperm(n, generator=order_gen).to(device) if shuffle else torch.arange(n, device=device)
        total = 0.0
        for i in range(0, n, batch_size):
            sel = order[i : i + batch_size]
            total += probe_step(probe, opt, x[sel], y[sel]) * sel.numel()
        loss_epoch = total / n
        top1 = topk_accuracy(probe_scores(probe, xt), yt, (1,))[1]
        history["train_loss"].append(loss_epoch)
        history["test_top1"].append(top1)
        bar.set_postfix(loss=f"{loss_epoch:.3f}", top1=f"{top1:.1f}", refresh=False)  # drawn at the next update
        if writer is not None:
            writer.add_scalar("probe/train_loss", loss_epoch, epoch + 1)
            writer.add_scalar("probe/test_top1", top1, epoch + 1)
    bar.close()
    acc = topk_accuracy(probe_scores(probe, xt), yt, ks)
    return {"seed": seed, "epochs": epochs, **{f"top{k}": acc[k] for k in ks}, "train_loss": loss_epoch, "history": history}
