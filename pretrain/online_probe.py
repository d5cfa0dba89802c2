"""An online linear probe (``train.online_probe=true``): a linear head trained alongside pretraining on
the encoder's detached features of the training batches (the shards carry labels), with its own Adam,
so each report shows probe top-1 (TensorBoard ``online_probe/top1`` and the progress line) without
stopping the run.

The head reads the feature the offline probe reads for the task's encoder (``eval.features``, the
task registry's ``eval_kind``): InfoMax, the image's features; jigsaw, the mean of an image's 9 tile
features. A jigsaw batch holds each training image's 9 tiles (once, or in each of its puzzles): the
mean over a puzzle's 9 does not depend on their order, so every puzzle of an image gives its image's
feature, labelled with the image's class.

It never touches the encoder: a forward hook keeps a detached copy of the features the task's own
forward pass computes (no second forward), the head's loss reaches only the head, and its init draws
from its own generator, never the global RNG the run's dropout and marginal pairs read. Under DDP its
gradient is averaged over ranks (one small all-reduce a step), so every rank holds the same head and
rank 0's checkpoint restores it exactly. A step reads nothing back from the device: top-1 and loss
stay on it, summed in the loop's metric window.

The number is an online read (each batch is scored before the head learns from it, on training
images): it tracks the trend; the offline probe (``python -m eval.linear``) gives the result.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain import dist


def image_features(features: torch.Tensor, batch: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 [N, D], labels int64 [N]): the encoder's output for ``batch`` as the offline probe reads it.

    infomax: features [B, ...] -> [B, D], labels ``batch["label"]`` [B].
    jigsaw: features [R·9, D] of R puzzles (``patches`` layout: labels [R] are theirs) or of R images'
    tiles (``tiles`` layouts, with ``perm_rows``: each image's label is that of its puzzles,
    ``image_index`` [P]) -> the mean of each 9, [R, D]. Nothing is read back from the device.
    """
    labels = batch["label"]
    if kind == "infomax":
        return features.flatten(1).float(), labels
    n_tiles = batch["perm_rows"].shape[1] if "perm_rows" in batch else batch["patches"].shape[1]
    flat = features.flatten(1).float()
    x = flat.view(-1, n_tiles, flat.shape[1]).mean(1)
    if "perm_rows" in batch:  # one row an image: its puzzles' label (all the same)
        labels = torch.full((x.shape[0],), -1, dtype=labels.dtype, device=labels.device).scatter_(0, batch["image_index"], labels)
    return x, labels


def feature_module(encoder: nn.Module) -> nn.Module:
    """The module whose output, flattened, is ``encoder(x)``: the last kept layer of an encoder with
    ``forward_layers`` (the InfoMax task calls that, not ``forward``), else the encoder itself."""
    return encoder.layers[-1] if hasattr(encoder, "forward_layers") else encoder


class OnlineProbe:
    """A linear head on the detached features of ``encoder`` (the task's, not a copy).

    ``step(batch)`` after each training step: the features its forward pass left and the batch's
    ``label`` int64 (-1 unlabelled, left out) -> {"online_probe/top1" (%), "online_probe/loss"}: 0-d
    tensors on the device. ``kind``: the feature protocol, ``infomax`` or ``jigsaw`` (see
    :func:`image_features`).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, lr: float, seed: int, device: torch.device | str,
                 kind: str = "infomax"):
        if num_classes < 2:
            raise ValueError(f"train.online_probe needs a labelled split of >= 2 classes, got {num_classes}")
        from pretrain import tasks

        known = sorted({tasks.spec(k).eval_kind for k in tasks.kinds()})  # eval.features' protocols, by task kind
        if kind not in known:
            raise ValueError(f"online probe: unknown feature kind {kind!r}; use one of {', '.join(known)}")
        self.kind = kind
        dim = encoder.feature_dim
        self.head = nn.utils.skip_init(nn.Linear, dim, num_classes, device=device)  # no draw from the global RNG
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(dim)
        with torch.no_grad():  # nn.Linear's default init, from the head's own generator
            self.head.weight.copy_(torch.empty(num_classes, dim).uniform_(-bound, bound, generator=g))
            self.head.bias.copy_(torch.empty(num_classes).uniform_(-bound, bound, generator=g))
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=lr, fused=True)
        self.features: torch.Tensor | None = None
        self.hook = feature_module(encoder).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = output.detach()

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One Adam step of the head on the features of the forward pass just run on ``batch`` (on the device)."""
        if self.features is None:
            raise RuntimeError("online probe: no features captured; the task's forward pass did not run the encoder")
        x, labels = image_features(self.features, batch, self.kind)
        self.features = None
        labelled = labels >= 0
        count = labelled.sum().clamp(min=1)
        logits = self.head(x)
        loss = (F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * labelled).sum() / count
        top1 = ((logits.detach().argmax(1) == labels) & labelled).sum() * (100.0 / count)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_distributed():  # the same head on every rank: average its gradient as DDP would
            params = list(self.head.parameters())
            flat = dist.all_reduce_mean_detached(torch.cat([p.grad.flatten() for p in params]))
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p))
        self.optimizer.step()
        return {"online_probe/top1": top1.detach(), "online_probe/loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a checkpoint's probe; None (a checkpoint written without the probe) keeps the fresh head."""
        if state is not None:
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])


def from_config(cfg, task: nn.Module, device: torch.device) -> OnlineProbe | None:
    """The run's online probe (``train.online_probe``), or None when it is off."""
    if not cfg.train.online_probe:
        return None
    from data_prep.manifest import read_manifest

    from pretrain import tasks

    classes = len(read_manifest(cfg.data.shards)["class_names"])
    return OnlineProbe(task.encoder, classes, lr=cfg.train.online_probe_lr, seed=cfg.run.seed, device=device,
                       kind=tasks.spec(cfg.task.kind).eval_kind)
