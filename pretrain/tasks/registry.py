"""The task registry: the one place that lists the pretraining task kinds and what each needs.

Every part that depends on the kind asks here: the config check (does it take an MI bound, a
permutation set?), the training loop (which data stream feeds it, which input preview goes to
TensorBoard), the evaluation (which frozen-feature protocol its encoder takes). Adding a kind is
one :func:`register` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class TaskSpec:
    """What the rest of the project needs to know about a task kind.

    build: ``(encoder, estimator module or None, takes_baseline, num_permutations, **kwargs) -> Task``.
    stream: the ``data_prep`` stream that feeds it (``jigsaw`` puzzles or ``infomax`` images).
    eval_kind: the feature protocol of ``eval.features`` for its encoder (``jigsaw`` or ``infomax``).
    needs_estimator: an MI bound from ``pretrain.estimators`` is required (else it must be unset).
    needs_labels: trains on the stream's labels: the config check wants a labelled split and
        ``task.kwargs.num_classes`` equal to the shards' class count.
    """

    kind: str
    build: Callable[..., nn.Module]
    stream: str
    eval_kind: str
    needs_estimator: bool
    needs_labels: bool = False

    @property
    def uses_permutations(self) -> bool:
        """Jigsaw tasks read the permutation set (``data.num_permutations`` rows of 9)."""
        return self.stream == "jigsaw"

    @property
    def batch_key(self) -> str:
        """The ``data`` key that sets how many images one batch of this task's stream takes."""
        return BATCH_KEYS[self.stream]

    def preview(self, batch: dict, n: int = 4) -> torch.Tensor:
        """A [3, H, W] image in [0, 1] of the first inputs of ``batch`` (for TensorBoard)."""
        return PREVIEWS[self.stream](batch, n)

    def open_stream(self, data, permutations: torch.Tensor | None, **common):
        """This task's training loader over ``data`` (the config's ``data`` section).

        ``common``: the stream options every stream takes (split, seed, epoch, rank, ...).
        """
        return OPENERS[self.stream](data, permutations, **common)


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.kind in _REGISTRY:
        raise ValueError(f"task kind {spec.kind!r} is already registered")
    _REGISTRY[spec.kind] = spec
    return spec


def kinds() -> list[str]:
    """Names of the registered task kinds, in registration order."""
    return list(_REGISTRY)


def spec(kind: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``kind``; unknown kind -> ``ValueError`` naming the known ones."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(_REGISTRY)}") from None


def _normalise(tiles: torch.Tensor) -> torch.Tensor:
    lo = tiles.amin(dim=(1, 2, 3), keepdim=True)
    hi = tiles.amax(dim=(1, 2, 3), keepdim=True)
    return (tiles - lo) / (hi - lo).clamp_min(1e-8)


def jigsaw_preview(batch: dict, n: int = 4) -> torch.Tensor:
    """``n`` scrambled puzzles, 3×3 patches in batch order (either stream layout)."""
    from torchvision.utils import make_grid

    from data_prep.jigsaw import scramble, standardise

    if "patches" in batch:
        p = batch["patches"][:n].detach().float().cpu()  # [n, 9, 3, h, w]
    else:  # unique tiles (or uint8 tiles for the device): scramble the first n puzzles for display
        from data_prep.jigsaw_stream import with_decoded_crops

        batch = with_decoded_crops(batch, "cpu")
        tiles = standardise(batch["tiles_u8"].cpu(), batch["gray"].cpu()) if "tiles_u8" in batch else batch["tiles"]
        p = scramble(tiles.detach().float().cpu(), batch["perm_rows"].cpu(),
                     batch["image_index"][:n].cpu(), batch["perm_slot"][:n].cpu())
    n_, _, c, h, w = p.shape
    grid = p.reshape(n_, 3, 3, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n_, c, 3 * h, 3 * w)
    return make_grid(_normalise(grid), nrow=4, padding=2)


def image_preview(batch: dict, n: int = 4) -> torch.Tensor:
    """The first ``4 n`` images of the batch."""
    from torchvision.utils import make_grid

    return make_grid(_normalise(batch["images"][: 4 * n].detach().float().cpu()), nrow=4, padding=2)


def open_jigsaw(data, permutations: torch.Tensor, **common):
    from data_prep.jigsaw_stream import jigsaw_loader

    return jigsaw_loader(data.shards, permutations=permutations.numpy(), images_per_batch=data.images_per_batch,
                         perms_per_image=data.perms_per_image, gather=not data.unique_tiles,
                         device_augment=data.augment_on == "device", device_decode=data.decode_on == "device",
                         **common)


def open_infomax(data, permutations: None, **common):
    from data_prep.infomax_stream import infomax_loader

    return infomax_loader(data.shards, batch_size=data.batch_size, size=data.size, **common)


PREVIEWS = {"jigsaw": jigsaw_preview, "infomax": image_preview}
OPENERS = {"jigsaw": open_jigsaw, "infomax": open_infomax}
BATCH_KEYS = {"jigsaw": "images_per_batch", "infomax": "batch_size"}
