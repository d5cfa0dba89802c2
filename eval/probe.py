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

BETAS = (0.9, 0.999)
BN_EPS = 1e-6  # MAE's BatchNorm before its linear probe


def make_probe(feature_dim: int, num_classes: int, seed: int, lr: float = 1e-4, device: str | torch.device = "cpu", *,
               weight_decay: float = 0.0, batchnorm: bool = False) -> tuple[nn.Module, torch.optim.Adam]:
    """A seeded linear layer feature_dim -> num_classes and its Adam (0.9, 0.999); the paper's probe
    (App. D) has no weight decay and no BatchNorm. `batchnorm` puts a parameter-free BatchNorm before
    the linear layer, as MAE's linear probe does (`BatchNorm1d(affine=False, eps=1e-6)`)."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():  # nn.Linear's default init, but from our generator so each seed is reproducible
        weight, bias = init_linear(feature_dim, num_classes, g)
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    probe = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False, eps=BN_EPS), linear) if batchnorm else linear
    probe = probe.to(device)
    # fused: one kernel a step, and its step counters stay on the device (the unfused Adam reads them back every step)
    return probe, torch.optim.Adam(probe.parameters(), lr=lr, betas=BETAS, weight_decay=weight_decay, fused=True)


def probe_memory_bytes(feature_dim: int, num_classes: int, num_test: int, heads: int = 1) -> tuple[int, int]:
    """(bytes on the probe's device, bytes on the host) a probe needs beyond the features: per head the
    weights, their gradient and Adam's two moments in fp32; on the host the test logits (fp32) and the
    kNN votes (fp64), each [num_test, num_classes]."""
    return 16 * (feature_dim + 1) * num_classes * heads, 12 * num_test * num_classes


def check_probe_memory(feature_dim: int, num_classes: int, num_test: int, device: str | torch.device, heads: int = 1) -> None:
    """A one-line `MemoryError` when the probe cannot fit in the memory free now (on `device` and on the
    host), before any feature is extracted: 10^6 classes of 2,048-d features need 33 GB."""
    import psutil

    device = torch.device(device)
    on_device, on_host = probe_memory_bytes(feature_dim, num_classes, num_test, heads)
    host_free = psutil.virtual_memory().available
    places = [(on_host + (on_device if device.type == "cpu" else 0), host_free, "host")]
    if device.type == "cuda":
        places.append((on_device, torch.cuda.mem_get_info(device)[0], str(device)))
    for need, free, where in places:
        if need > free:
            raise MemoryError(
                f"a linear probe of {num_classes:,} classes on {feature_dim:,}-d features"
                + (f" ({heads} heads)" if heads > 1 else "") + f" needs {need / 1e9:.1f} GB on the {where}, "
                f"{free / 1e9:.1f} GB are free; probe fewer classes or use a machine with more memory")


def init_linear(feature_dim: int, num_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init from `generator`: (weight [C, D], bias [C]), uniform in ±1/sqrt(D)."""
    bound = 1.0 / math.sqrt(feature_dim)
    weight = torch.empty(num_classes, feature_dim).uniform_(-bound, bound, generator=generator)
    return weight, torch.empty(num_classes).uniform_(-bound, bound, generator=generator)


def probe_step(probe: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One Adam step of cross-entropy on a batch. features: [B, D], labels: [B].

    Returns the batch loss as a detached tensor on the probe's device: reading it (`float`) waits for
    the device, so callers sum it there and read once an epoch.
    """
    loss = F.cross_entropy(probe(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def probe_scores(probe: nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of the probe (in eval mode) for features [N, D], in batches. Returns [N, C] on the CPU."""
    was_training = probe.training
    probe.eval()
    scores = torch.cat([probe(features[i : i + batch_size]) for i in range(0, features.shape[0], batch_size)])
    probe.train(was_training)
    return scores.cpu()


def batch_order_generator(seed: int) -> torch.Generator:
    """The generator of a probe seed's batch order, independent of its init stream."""
    return torch.Generator().manual_seed(seed + 1_000_003)


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
    weight_decay: float = 0.0,
    batchnorm: bool = False,
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
    `shuffle`); the loss is summed on the device and read once an epoch. The reported accuracies are those after the last epoch (no model selection on the
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
    probe, opt = make_probe(x.shape[1], num_classes, seed, lr, device, weight_decay=weight_decay, batchnorm=batchnorm)
    order_gen = batch_order_generator(seed)
    n = x.shape[0]
    bar = progress_bar(range(epochs), desc=desc, enabled=progress, leave=False)
    loss_epoch = float("nan")
    history = {"train_loss": [], "test_top1": []}
    for epoch in bar:
        order = torch.randperm(n, generator=order_gen).to(device) if shuffle else torch.arange(n, device=device)
        total = torch.zeros((), device=device)
        for i in range(0, n, batch_size):
            sel = order[i : i + batch_size]
            total += probe_step(probe, opt, x.index_select(0, sel), y.index_select(0, sel)) * sel.numel()
        loss_epoch = float(total) / n  # the epoch's one read of the loss
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
