"""The supervised baseline of Table 2 ("Sup."): the same encoder trained with cross-entropy on labels.

A linear classifier on the encoder's features (the DCGAN encoder's 8,192 for depth 2) is trained
with the encoder end to end; afterwards the classifier is dropped and the frozen encoder is probed
exactly like the self-supervised ones. The paper does not describe its supervised head: a single
linear layer is our choice (it keeps every trained weight outside the probe inside the encoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, require

KIND = "supervised"


class Supervised(Task):
    """Cross-entropy on the labels of the InfoMax image stream.

    Args:
        encoder: from ``pretrain.models.build_encoder`` (features [B, feature_dim]).
        num_classes: label count of the training split (CIFAR-10 and STL-10: 10).
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__(encoder)
        if num_classes < 2:
            raise ValueError(f"task {KIND!r}: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``images`` [B, 3, S, S], ``label`` int64 [B] in 0..num_classes-1 ->
        {"loss": CE (grad), "acc": fraction of images whose argmax is the label}."""
        images = require(batch, "images", 4, KIND)
        labels = require(batch, "label", 1, KIND)
        logits = self.classifier(self.encoder(self.encoder_input(images))).float()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "acc": acc}
