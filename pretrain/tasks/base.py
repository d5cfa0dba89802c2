"""What every pretraining task shares: the encoder, the optional MI bound and the parameter split.

A task is an ``nn.Module`` that owns the encoder, its heads or witness and (for MI tasks) the
bound, so one DDP wrapper averages every gradient, η's included. ``task(batch) -> dict`` gives
``"loss"`` (scalar with grad) and detached scalar metrics.
"""
from __future__ import annotations


import torch
from torch import nn

from pretrain import estimators


PREPARED = "host_prepared"  # batch key: host_prepare has run


class Task(nn.Module):
    """Base of the pretraining tasks: ``encoder``, ``estimator`` (None for CE) and parameter groups."""

    def __init__(self, encoder: nn.Module, estimator: nn.Module | None = None):
        super().__init__()
        if not hasattr(encoder, "feature_dim"):
            raise ValueError(f"encoder {type(encoder).__name__} has no feature_dim: build it with pretrain.models.build_encoder")
        self.encoder = encoder
        self.estimator = estimator

    def eta_parameters(self) -> list[nn.Parameter]:
        """The bound's own parameters (η-MINE's scalar η), for their own optimiser (Adam, lr 1e-2)."""
        return [] if self.estimator is None else list(self.estimator.parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        """Encoder, heads and witness: every parameter not in ``eta_parameters()``."""
        eta_ids = {id(p) for p in self.eta_parameters()}
        return [p for p in self.parameters() if id(p) not in eta_ids]

    def estimator_metrics(self) -> dict[str, torch.Tensor]:
        """η, the normaliser e^{-η}·mean_marg e^f and ``mi/refit`` (the bound with η in closed form
        on the same pairs) after the last call (η-MINE bounds only), detached."""
        metrics = getattr(self.estimator, "metrics", None)
        return metrics() if metrics is not None else {}

    def host_prepare(self, batch: dict) -> dict:
        """The batch with its values checked and what derives from them added (e.g. the MI pair masks),
        marked ``PREPARED``; a batch already marked comes back as it is.

        The training loop calls this on the host before the batch moves to the device: reading the
        values of device tensors would stall every step. ``forward`` calls it too, so a batch handed
        straight to the task (tests, notebooks) is checked all the same.
        """
        if batch.get(PREPARED):
            return batch
        return {**self.check_and_derive(batch), PREPARED: True}

    def check_and_derive(self, batch: dict) -> dict:
        """Value checks and derived tensors of a host batch (:meth:`host_prepare`). Base: none."""
        return batch

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] in the encoder's memory format (channels_last when its conv weights are)."""
        for p in self.encoder.parameters():
            if p.dim() != 4:
                continue
            standard, channels_last = p.is_contiguous(), p.is_contiguous(memory_format=torch.channels_last)
            if standard != channels_last:  # 1×1 kernels are both: look further
                return x.contiguous(memory_format=torch.channels_last) if channels_last else x
        return x


def build_estimator(kind: str, name: str | None, kwargs: dict | None) -> tuple[nn.Module, bool]:
    """Build the MI bound for an MI task: (module, whether it takes ``log_baseline``)."""
    if name is None:
        raise ValueError(f"task {kind!r} needs an estimator; set one of: {', '.join(estimators.names())}")
    return estimators.build(name, **(kwargs or {})), estimators.capabilities(name).takes_baseline


def require(batch: dict, key: str, ndim: int, kind: str) -> torch.Tensor:
    """``batch[key]`` checked to be a tensor of ``ndim`` dimensions, or a one-line ValueError."""
    if key not in batch:
        raise ValueError(f"task {kind!r}: batch has no {key!r} (keys: {', '.join(sorted(batch))}); use the matching data stream")
    value = batch[key]
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"task {kind!r}: batch[{key!r}] must be a {ndim}-D tensor, got {shape}")
    return value
