"""The Deep InfoMax pretraining stream: small whole images (32×32 by default) for the DCGAN encoder.

Images are squashed to ``size``×``size`` (STL-10's 96×96 scaled down as in the paper; CIFAR-10 stays
as is), flipped left-right with p = 0.5 in training, and normalised to [-1, 1] per channel
(``(x/255 - 0.5) / 0.5``, the DCGAN convention). Batches: ``images`` float32 [B, 3, size, size],
``label`` int64 [B] (-1 when unlabelled).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from data_prep.image_io import decode_resized
from data_prep.jigsaw_stream import image_bytes, sample_label
from data_prep.shard_stream import BatchLoader, ShardBatchStream

MEAN = 0.5
STD = 0.5


def decode_small(sample: dict, size: int = 32) -> tuple[np.ndarray, int]:
    """Shard sample -> (uint8 [size, size, 3], label)."""
    return decode_resized(image_bytes(sample), size), sample_label(sample)


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(255.0).sub_(MEAN).div_(STD).contiguous()


def collate_infomax(group: list, rng: np.random.Generator, *, train: bool) -> dict:
    images = np.stack([image for image, _ in group])
    if train:
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip, :, ::-1]
    return {"images": normalise(images), "label": torch.tensor([label for _, label in group], dtype=torch.int64)}


def infomax_loader(shard_dir, split: str = "train", *, batch_size: int, size: int = 32, train: bool = True,
                   seed: int = 0, epoch: int = 0, batches_per_epoch: int | None = None, num_workers: int = 0,
                   rank: int | None = None, world_size: int | None = None, resampled: bool = True,
                   skip_batches: int = 0, shuffle_buffer: int = 2000, pin_memory: bool = False,
                   endless: bool = False) -> BatchLoader:
    """Iterable of ``{"images": float32 [B, 3, size, size], "label": int64 [B]}``, one epoch per iteration.

    Distribution, seeding, resuming (``skip_batches``) and the epoch length behave as in
    :func:`data_prep.jigsaw_stream.jigsaw_loader`, ``endless`` too.
    """
    stream = ShardBatchStream(
        str(shard_dir), split, group_size=batch_size, decode=functools.partial(decode_small, size=size),
        collate=functools.partial(collate_infomax, train=train), train=train, seed=seed, epoch=epoch,
        batches_per_epoch=batches_per_epoch, num_workers=num_workers, rank=rank, world_size=world_size,
        resampled=resampled, skip_batches=skip_batches, shuffle_buffer=shuffle_buffer, endless=endless)
    return BatchLoader(stream, num_workers, pin_memory=pin_memory)
