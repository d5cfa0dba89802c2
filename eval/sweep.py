"""K linear probes trained at once on cached features: a grid of learning rates × weight decays
(optionally each with a BatchNorm before the linear layer, as MAE's probe), one pass over the
features an epoch and one matmul for all heads, the head chosen on a held-out share of the TRAINING
split.

Every head starts from the same seeded init and sees the same batches in the same order, so head k
is the probe :func:`eval.probe.train_linear_probe` trains alone with that head's settings and seed
(tested to float tolerance): the same fused Adam kernel, run on each head's rows of the stacked
weights in place. The K heads' scores come from one matmul of the batch with their
weights stacked ([K·C, D]); the batch's feature read (by row index: the fit part of the split is
never copied), the loss, the step's Python and kernel launches are paid once for all heads. The
matmuls' FLOPs grow with K: on a CPU with wide features they dominate (benchmarks/linear_probe_sweep.py).

Selection never sees the test split: :func:`train_sweep` takes train features only; the caller
scores the chosen head on the test split once (:func:`score_head`).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam  # the functional form of torch.optim.Adam

from console.progress import bar as progress_bar
from eval.probe import BETAS, BN_EPS, batch_order_generator, init_linear
from eval.topk import topk_accuracy


def sweep_grid(lrs: Sequence[float], weight_decays: Sequence[float], batchnorm: Sequence[bool] = (False,)) -> list[dict]:
    """The heads of a sweep: every (lr, weight_decay, batchnorm) combination, in that nesting order.

    Returns [{"name", "lr", "weight_decay", "batchnorm"}]; a one-line ValueError for an empty axis or
    a learning rate <= 0 / weight decay < 0.
    """
    for name, axis in (("sweep_lrs", lrs), ("sweep_weight_decays", weight_decays), ("sweep_batchnorm", batchnorm)):
        if not list(axis):
            raise ValueError(f"{name} is empty; give at least one value (e.g. {name}=[...])")
    if any(lr <= 0 for lr in lrs) or any(wd < 0 for wd in weight_decays):
        raise ValueError(f"sweep_lrs must be > 0 and sweep_weight_decays >= 0, got {list(lrs)} and {list(weight_decays)}")
    return [{"name": f"lr{lr:g}-wd{wd:g}" + ("-bn" if bn else ""), "lr": float(lr), "weight_decay": float(wd), "batchnorm": bool(bn)}
            for bn, lr, wd in itertools.product(batchnorm, lrs, weight_decays)]


def holdout_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices) of a train split of `n` rows: a seeded random `share` is held out."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout_share must be in (0, 1), got {share}")
    held = max(1, round(share * n))
    if held >= n:
        raise ValueError(f"holdout_share={share} of {n} train samples leaves none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


class _Heads(nn.Module):
    """K linear heads of one input (raw or BatchNorm'd features), stacked: one weight [K·C, D] (head j's
    rows j·C .. j·C + C - 1, each as nn.Linear's) and one bias [K·C], scored with one matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, k: int, batchnorm: bool):
        super().__init__()
        self.k, self.num_classes = k, bias.numel()
        self.weight = nn.Parameter(weight.repeat(k, 1))
        self.bias = nn.Parameter(bias.repeat(k))
        self.norm = nn.BatchNorm1d(weight.shape[1], affine=False, eps=BN_EPS) if batchnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, D] -> scores [B, K, C]."""
        if self.norm is not None:
            x = self.norm(x)
        return F.linear(x, self.weight, self.bias).view(x.shape[0], self.k, self.num_classes)


class _HeadsAdam:
    """The one-head probe's fused Adam (``torch.optim.adam.adam``, fused) on each head's rows of the
    stacked weight and bias, in place: one kernel a head, with its own lr and weight decay, and no
    per-group bookkeeping of an ``Optimizer`` of K parameter groups. ``settings``: (lr, weight decay) per head."""

    def __init__(self, heads: _Heads, settings: list[tuple[float, float]]):
        self.heads, self.settings = heads, settings
        self.exp_avgs = [torch.zeros_like(heads.weight), torch.zeros_like(heads.bias)]
        self.exp_avg_sqs = [torch.zeros_like(heads.weight), torch.zeros_like(heads.bias)]
        self.steps = [torch.zeros((), device=heads.weight.device) for _ in range(2 * len(settings))]  # on the device: never read back

    @torch.no_grad()
    def step(self) -> None:
        params = [self.heads.weight, self.heads.bias]
        grads = [p.grad for p in params]
        c = self.heads.num_classes
        for j, (lr, weight_decay) in enumerate(self.settings):
            rows = slice(j * c, (j + 1) * c)
            adam([p[rows] for p in params], [g[rows] for g in grads], [m[rows] for m in self.exp_avgs],
                 [v[rows] for v in self.exp_avg_sqs], [], self.steps[2 * j : 2 * j + 2], fused=True, amsgrad=False,
                 beta1=BETAS[0], beta2=BETAS[1], lr=lr, weight_decay=weight_decay, eps=1e-8, maximize=False)
        for p in params:
            p.grad = None


def train_sweep(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    grid: list[dict],
    *,
    epochs: int,
    seed: int,
    holdout_share: float = 0.1,
    holdout_seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    writer=None,
    progress: bool = True,
    desc: str = "sweep",
) -> dict:
    """Train every head of `grid` (see :func:`sweep_grid`) on the fit part of the train split, score each
    on the held-out part after every epoch, and choose the best held-out top-1 (the first in grid order
    on a tie). train_features: [N, D], train_labels: [N].

    Returns {"seed", "epochs", "holdout": {"share", "seed", "num_fit", "num_heldout"}, "heads": grid with
    "heldout_top1" each, "chosen": index into heads, every head's "weights" [K, C, D] and "biases" [K, C]
    (CPU), "batchnorm": the running {"mean", "var"} [D] of the heads with BatchNorm (or None),
    "history": {"heldout_top1": [epochs][K]}}.
    `writer` (optional SummaryWriter) gets `sweep/heldout_top1/<head>` per epoch.
    """
    if train_features.ndim != 2 or train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_sweep: want features [N, D] and labels [N], got {tuple(train_features.shape)} and {tuple(train_labels.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"train_sweep: epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fit, held = holdout_split(train_features.shape[0], holdout_share, holdout_seed)
    # the batches are gathered from the train features by row index: the fit part is never copied out
    features, labels = train_features.float().to(device), train_labels.long().to(device)
    fit = fit.to(device)
    xh, yh = features[held.to(device)], labels[held.to(device)]
    weight, bias = init_linear(features.shape[1], num_classes, torch.Generator().manual_seed(seed))
    groups = []  # one per input (raw features, BatchNorm'd features): the heads of the grid that read it
    for bn in (False, True):
        idx = [i for i, h in enumerate(grid) if h["batchnorm"] == bn]
        if not idx:
            continue
        heads = _Heads(weight, bias, len(idx), bn).to(device)
        groups.append((idx, heads, _HeadsAdam(heads, [(grid[i]["lr"], grid[i]["weight_decay"]) for i in idx])))
    order_gen = batch_order_generator(seed)
    n, k = fit.numel(), len(grid)
    history = []
    bar = progress_bar(range(epochs), desc=desc, enabled=progress, leave=False)
    for epoch in bar:
        order = torch.randperm(n, generator=order_gen).to(device)
        for heads in (g[1] for g in groups):
            heads.train()
        for i in range(0, n, batch_size):
            rows = fit[order[i : i + batch_size]]
            xb, yb = features.index_select(0, rows), labels.index_select(0, rows)
            for idx, heads, optimizer in groups:
                scores = heads(xb)  # [B, K', C]
                # each head's mean cross-entropy, summed: head j's gradient is that of its own loss
                loss = F.cross_entropy(scores.view(-1, num_classes), yb.repeat_interleave(len(idx)), reduction="sum") / yb.numel()
                loss.backward()
                optimizer.step()
        acc = heldout_top1(groups, xh, yh, k)
        history.append(acc)
        best = max(range(k), key=lambda j: (acc[j], -j))
        bar.set_postfix(best=f"{grid[best]['name']} {acc[best]:.1f}", refresh=False)
        if writer is not None:
            for h, a in zip(grid, acc):
                writer.add_scalar(f"sweep/heldout_top1/{h['name']}", a, epoch + 1)
    bar.close()
    acc = history[-1]
    chosen = max(range(k), key=lambda j: (acc[j], -j))
    weights, biases, norm = torch.empty(k, num_classes, features.shape[1]), torch.empty(k, num_classes), None
    for idx, heads, _ in groups:
        weights[idx] = heads.weight.detach().view(len(idx), num_classes, -1).cpu()
        biases[idx] = heads.bias.detach().view(len(idx), num_classes).cpu()
        if heads.norm is not None:  # one BatchNorm for every head that has one: same batches, same statistics
            norm = {"mean": heads.norm.running_mean.cpu(), "var": heads.norm.running_var.cpu()}
    return {"seed": seed, "epochs": epochs,
            "holdout": {"share": holdout_share, "seed": holdout_seed, "num_fit": int(fit.numel()), "num_heldout": int(held.numel())},
            "heads": [{**h, "heldout_top1": a} for h, a in zip(grid, acc)], "chosen": chosen,
            "weights": weights, "biases": biases, "batchnorm": norm, "history": {"heldout_top1": history}}


@torch.no_grad()
def heldout_top1(groups, xh: torch.Tensor, yh: torch.Tensor, k: int, batch_size: int = 4096) -> list[float]:
    """Top-1 (%) of every head on the held-out rows xh [H, D], yh [H], in grid order; `groups`: train_sweep's
    (grid indices, heads, optimiser) per input. One host read."""
    correct = torch.zeros(k, device=xh.device)
    for idx, heads, _ in groups:
        heads.eval()
        hits = torch.zeros(len(idx), device=xh.device)
        for i in range(0, xh.shape[0], batch_size):
            hits += heads(xh[i : i + batch_size]).argmax(-1).eq(yh[i : i + batch_size, None]).sum(0)
        correct[torch.tensor(idx, device=xh.device)] = hits
    return [100.0 * c / xh.shape[0] for c in correct.tolist()]


@torch.no_grad()
def score_head(sweep: dict, j: int, features: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Top-k (%) of head `j` of a :func:`train_sweep` result on features [Q, D] (CPU), labels [Q]."""
    x = features.float()
    if sweep["heads"][j]["batchnorm"]:
        x = (x - sweep["batchnorm"]["mean"]) / (sweep["batchnorm"]["var"] + BN_EPS).sqrt()
    return topk_accuracy(torch.addmm(sweep["biases"][j], x, sweep["weights"][j].t()), labels.cpu(), ks)
