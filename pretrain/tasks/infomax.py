"""Deep InfoMax with an MI bound (paper §5, Fig. 4b): MI between a shallow and a deeper layer.

The DCGAN-style encoder maps B images to feature maps; the witness embeds layer l's map and layer
k's map and scores every pair: scores [B, B], diagonal = the same image (joint pairs, B), every
other entry = two different images (marginal pairs, B² − B). Layers count from 1, as the paper's
"first two convolutional layers": the defaults l = 1, k = the encoder's last layer.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.models import InfoMaxWitness

from .base import Task, require

KIND = "infomax"


class InfoMax(Task):
    """InfoMax task on an encoder with ``forward_layers`` (the ``dcgan`` encoder).

    Args:
        encoder: ``build_encoder("dcgan", depth=...)``.
        estimator: the bound; a-MINE also gets a baseline η(y') from the witness.
        layer_l: the shallow layer (1-based, default 1). layer_k: the deeper one (default: last).
        **witness_kwargs: ``InfoMaxWitness`` options (``reduce_channels``, ``hidden_dim``, ``embed_dim``).

    Every bound sees one batch: the training loop calls the task once per virtual shard, so the
    marginal pairs (InfoNCE's candidates too) are that micro-batch's, whichever worker runs it
    (``pretrain.virtual_shards``).
    """

    def __init__(self, encoder: nn.Module, estimator: nn.Module, takes_baseline: bool = False,
                 layer_l: int = 1, layer_k: int | None = None, **witness_kwargs):
        super().__init__(encoder, estimator)
        if not hasattr(encoder, "forward_layers") or not hasattr(encoder, "layer_shapes"):
            raise ValueError(f"task {KIND!r} needs an encoder with forward_layers (use encoder 'dcgan'), got {type(encoder).__name__}")
        shapes = encoder.layer_shapes()
        depth = len(shapes)
        layer_k = depth if layer_k is None else layer_k
        if not 1 <= layer_l < layer_k <= depth:
            raise ValueError(f"task {KIND!r}: need 1 <= layer_l < layer_k <= encoder depth {depth}, got l={layer_l}, k={layer_k}")
        if layer_k < depth:
            raise ValueError(f"task {KIND!r}: layers after layer_k={layer_k} would get no gradient; build the encoder with depth={layer_k}")
        self.layer_l, self.layer_k, self.takes_baseline = layer_l, layer_k, takes_baseline
        self.witness = InfoMaxWitness(shapes[layer_l - 1], shapes[layer_k - 1], log_baseline=takes_baseline, **witness_kwargs)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``images`` [B, 3, S, S] -> {"loss", "mi", and "eta", "normaliser" for η-MINE}."""
        images = require(batch, "images", 4, KIND)
        if images.shape[0] < 2:
            raise ValueError(f"task {KIND!r}: need at least 2 images per batch for marginal pairs, got {images.shape[0]}")
        maps = self.encoder.forward_layers(self.encoder_input(images))
        a, b = self.witness.embed(maps[self.layer_l - 1], maps[self.layer_k - 1])
        scores = self.witness.scores(a, b).float()
        extra = {"log_baseline": self.witness.log_baseline(b).float()} if self.takes_baseline else {}
        loss, mi = self.estimator(scores, None, None, **extra)
        return {"loss": loss, "mi": mi, **self.estimator_metrics()}
