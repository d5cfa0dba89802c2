"""The jigsaw pretraining stream: batches of 10 images × 16 permutations from the shards.

Per batch: ``patches`` float32 [I·P, 9, 3, 64, 64] (I = images_per_batch, P = perms_per_image; puzzle
``r = i·P + s`` is image ``i`` scrambled by ``batch_perms[s]``), ``perm_index`` int64 [I·P],
``batch_perms`` int64 [P], ``perm_slot`` int64 [I·P], ``image_index`` int64 [I·P], ``label`` int64 [I·P]
(-1 for unlabelled data). Geometry and scrambling: :mod:`data_prep.jigsaw`.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from data_prep import jigsaw
from data_prep.image_io import decode_resized
from data_prep.shard_stream import BatchLoader, ShardBatchStream


def image_bytes(sample: dict) -> bytes:
    """The encoded image of a shard sample (``.jpg`` or ``.png``); KeyError naming the keys otherwise."""
    for ext in ("jpg", "png", "jpeg"):
        if ext in sample:
            return sample[ext]
    raise KeyError(f"sample {sample.get('__key__')!r} has no .jpg/.png (found {sorted(k for k in sample if not k.startswith('__'))})")


def sample_label(sample: dict) -> int:
    return int(sample["cls"]) if "cls" in sample else -1


def decode_for_jigsaw(sample: dict) -> tuple[np.ndarray, int]:
    """Shard sample -> (uint8 [292, 292, 3] squashed image, label)."""
    return decode_resized(image_bytes(sample), jigsaw.RESIZE), sample_label(sample)


def collate_jigsaw(group: list, rng: np.random.Generator, *, permutations: np.ndarray, perms_per_image: int,
                   train: bool, gather: bool = True, device_augment: bool = False) -> dict:
    tiles = np.stack([jigsaw.tile_crops(image, rng if train else None) for image, _ in group])
    labels = np.array([label for _, label in group], dtype=np.int64)
    return jigsaw.make_batch(tiles, labels, permutations, perms_per_image, rng, train=train, gather=gather,
                             device_augment=device_augment)


# ---- data.decode_on=device: the workers ship JPEG bytes and crop corners; the device decodes and crops


def encoded_for_jigsaw(sample: dict) -> tuple[torch.Tensor, int]:
    """Shard sample -> (its JPEG bytes as uint8 [n], label): nothing decoded in the worker."""
    data = image_bytes(sample)
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"sample {sample.get('__key__')!r} is not a JPEG: data.decode_on=device decodes JPEG only")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), sample_label(sample)


def collate_jigsaw_encoded(group: list, rng: np.random.Generator, *, permutations: np.ndarray, perms_per_image: int,
                           train: bool) -> dict:
    """The batch :func:`collate_jigsaw` makes with ``device_augment``, the same random draws in the same
    order, with ``jpeg`` (list of I uint8 tensors) and ``corners`` int64 [I, 9, 2] instead of ``tiles_u8``."""
    corners = np.stack([jigsaw.crop_corners(rng if train else None) for _ in group])
    labels = np.array([label for _, label in group], dtype=np.int64)
    batch = jigsaw.make_batch(None, labels, permutations, perms_per_image, rng, train=train, device_augment=True)
    return {**batch, "jpeg": [data for data, _ in group], "corners": torch.from_numpy(corners)}


def decode_crops(jpeg: list[torch.Tensor], corners: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """JPEG bytes of I images and their tiles' corners [I, 9, 2] -> ``tiles_u8`` uint8 [I, 9, 64, 64, 3] on
    ``device``, decoded there in one batch (``torchvision.io.decode_jpeg``: nvJPEG on CUDA). An image that
    is not 292×292 is squashed to it with antialiased bilinear resampling (PIL's, on the host path,
    differs in the last bits: build the shards with ``--resize 292`` for identical batches)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    size = jigsaw.RESIZE
    images = decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
    images = torch.stack([im if im.shape[1:] == (size, size) else resize(im, [size, size], antialias=True)
                          for im in images]).permute(0, 2, 3, 1)  # [I, 292, 292, 3]
    corners = corners.to(images.device, non_blocking=True)
    steps = torch.arange(jigsaw.PATCH, device=images.device)
    rows = (corners[..., 0, None] + steps)[:, :, :, None]  # [I, 9, 64, 1]
    cols = (corners[..., 1, None] + steps)[:, :, None, :]  # [I, 9, 1, 64]
    return images[torch.arange(len(images), device=images.device)[:, None, None, None], rows, cols]


def with_decoded_crops(batch: dict, device: torch.device | str) -> dict:
    """A ``jpeg`` + ``corners`` batch as the ``tiles_u8`` batch of ``data.augment_on=device`` (others unchanged)."""
    if "jpeg" not in batch:
        return batch
    rest = {k: v for k, v in batch.items() if k not in ("jpeg", "corners")}
    return {**rest, "tiles_u8": decode_crops(batch["jpeg"], batch["corners"], device)}


def jigsaw_loader(shard_dir, split: str = "train", *, permutations, images_per_batch: int = 10,
                  perms_per_image: int = 16, train: bool = True, seed: int = 0, epoch: int = 0,
                  batches_per_epoch: int | None = None, num_workers: int = 0, rank: int | None = None,
                  world_size: int | None = None, resampled: bool = True, skip_batches: int = 0,
                  shuffle_buffer: int = 1000, pin_memory: bool = False, gather: bool = True,
                  endless: bool = False, device_augment: bool = False, device_decode: bool = False) -> BatchLoader:
    """Iterable of jigsaw batches (dicts described in the module docstring), one epoch per iteration.

    permutations: int [n, 9] set (e.g. :func:`data_prep.jigsaw.max_hamming_permutations`).
    rank/world_size: default to ``RANK``/``WORLD_SIZE`` (Ray) or torch.distributed; every rank yields
    exactly ``batches_per_epoch`` batches (default: one pass over the split shared by all ranks).
    resampled: draw shards with replacement per (rank, worker) (any shard count works); False gives each
    (rank, worker) its own shards so no sample repeats within an epoch.
    skip_batches: resume mid-epoch after that many batches (same seed, epoch and num_workers give the
    very same remaining batches). train=False: centred crops, no grayscale, no shuffling.
    gather=False: yield ``tiles`` [I, 9, 3, 64, 64] and ``perm_rows`` [P, 9] instead of ``patches``
    (P times less data through the DataLoader; rebuild with :func:`data_prep.jigsaw.scramble`, or run the
    encoder on the I·9 unique tiles: BatchNorm statistics are the same, as every tile appears P times).
    endless: one iteration runs through epoch after epoch in the same loader workers.
    device_augment: batches carry uint8 ``tiles_u8`` and ``gray`` (see :func:`data_prep.jigsaw.make_batch`):
    the workers only decode and crop; gray, standardisation and scrambling run on the consumer's device.
    device_decode (with device_augment): the workers read JPEG bytes only and ship ``jpeg`` + ``corners``
    (:func:`collate_jigsaw_encoded`); :func:`with_decoded_crops` on the consumer's device makes ``tiles_u8``.
    """
    perms = np.asarray(permutations, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != 9 or not (np.sort(perms, 1) == np.arange(9)).all():
        raise ValueError(f"permutations must be an [n, 9] array of permutations of 0..8, got shape {perms.shape}")
    if perms_per_image > len(perms):
        raise ValueError(f"perms_per_image={perms_per_image} exceeds the {len(perms)} permutations given")
    if device_decode and not device_augment:
        raise ValueError("device_decode needs device_augment (the device crops and augments what it decodes)")
    if device_decode:
        decode, collate = encoded_for_jigsaw, functools.partial(
            collate_jigsaw_encoded, permutations=perms, perms_per_image=perms_per_image, train=train)
    else:
        decode, collate = decode_for_jigsaw, functools.partial(
            collate_jigsaw, permutations=perms, perms_per_image=perms_per_image, train=train, gather=gather,
            device_augment=device_augment)
    stream = ShardBatchStream(
        str(shard_dir), split, group_size=images_per_batch, decode=decode, collate=collate,
        train=train, seed=seed, epoch=epoch, batches_per_epoch=batches_per_epoch, num_workers=num_workers,
        rank=rank, world_size=world_size, resampled=resampled, skip_batches=skip_batches,
        shuffle_buffer=shuffle_buffer, endless=endless)
    return BatchLoader(stream, num_workers, pin_memory=pin_memory)
