"""The jigsaw pretraining stream: batches of 10 images × 16 permutations from the shards.

Per batch: ``patches`` float32 [I·P, 9, 3, 64, 64] (I = images_per_batch, P = perms_per_image; puzzle
``r = i·P + s`` is image ``i`` scrambled by ``batch_perms[s]``), ``perm_index`` int64 [I·P],
``batch_perms`` int64 [P], ``perm_slot`` int64 [I·P], ``image_index`` int64 [I·P], ``label`` int64 [I·P]
(-1 for unlabelled data). Geometry and scrambling: :mod:`data_prep.jigsaw`.
"""
from __future__ import annotations

import functools

import numpy as np

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


def jigsaw_loader(shard_dir, split: str = "train", *, permutations, images_per_batch: int = 10,
                  perms_per_image: int = 16, train: bool = True, seed: int = 0, epoch: int = 0,
                  batches_per_epoch: int | None = None, num_workers: int = 0, rank: int | None = None,
                  world_size: int | None = None, resampled: bool = True, skip_batches: int = 0,
                  shuffle_buffer: int = 1000, pin_memory: bool = False, gather: bool = True,
                  endless: bool = False, device_augment: bool = False) -> BatchLoader:
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
    """
    perms = np.asarray(permutations, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != 9 or not (np.sort(perms, 1) == np.arange(9)).all():
        raise ValueError(f"permutations must be an [n, 9] array of permutations of 0..8, got shape {perms.shape}")
    if perms_per_image > len(perms):
        raise ValueError(f"perms_per_image={perms_per_image} exceeds the {len(perms)} permutations given")
    stream = ShardBatchStream(
        str(shard_dir), split, group_size=images_per_batch, decode=decode_for_jigsaw,
        collate=functools.partial(collate_jigsaw, permutations=perms, perms_per_image=perms_per_image, train=train,
                                  gather=gather, device_augment=device_augment),
        train=train, seed=seed, epoch=epoch, batches_per_epoch=batches_per_epoch, num_workers=num_workers,
        rank=rank, world_size=world_size, resampled=resampled, skip_batches=skip_batches,
        shuffle_buffer=shuffle_buffer, endless=endless)
    return BatchLoader(stream, num_workers, pin_memory=pin_memory)
