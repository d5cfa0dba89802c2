"""Who reads what: ranks, DataLoader workers, batch quotas and seeds.

Global batch ``b`` of a rank's epoch is made by *virtual worker* ``b % W`` (W DataLoader workers, at
least 1). Physical worker ``w`` plays virtual worker ``(w + skip) % W``: the DataLoader hands out
batches round-robin starting at worker 0, so after skipping ``skip`` batches (resume) the batches still
come out in global order ``skip, skip+1, ...``. Every random choice is seeded from (seed, epoch, rank,
virtual worker) for the sample stream and (seed, epoch, rank, b) for the augmentation of batch ``b``:
a resumed run with the same number of workers sees exactly the same batches. Pretraining opens each
virtual shard v of V as rank v of V (:mod:`pretrain.virtual_shards`), whichever worker runs it.
"""
from __future__ import annotations

import os

import numpy as np


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else ``RANK``/``WORLD_SIZE`` (Ray sets them), else
    torch.distributed when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            env = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            env = (0, 1)
            try:
                import torch.distributed as dist
                if dist.is_available() and dist.is_initialized():
                    env = dist.get_rank(), dist.get_world_size()
            except ImportError:
                pass
        rank = env[0] if rank is None else rank
        world_size = env[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    return int(rank), int(world_size)


def loader_worker() -> tuple[int, int]:
    """(worker id, number of workers) inside a DataLoader worker, (0, 1) in the main process."""
    import torch.utils.data
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (order matters), stable across Python runs and machines."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def quota(n_batches: int, virtual: int, num_workers: int) -> int:
    """How many of the global batches ``0..n_batches-1`` belong to ``virtual`` (``b % W == virtual``)."""
    return max(0, (n_batches - virtual + num_workers - 1) // num_workers)


def virtual_worker(worker: int, num_workers: int, skip_batches: int) -> int:
    return (worker + skip_batches) % num_workers


def slot_shards(items: list, rank: int, world_size: int, virtual: int, num_workers: int) -> list:
    """The shards (or anything listed per shard) of one (rank, virtual worker) slot when not resampling:
    ``items[rank::world_size][virtual::num_workers]``, the same split as webdataset's
    ``split_by_node`` followed by ``split_by_worker``."""
    return list(items)[rank::world_size][virtual::num_workers]


def default_batches_per_epoch(shard_counts: list[int], group: int, world_size: int, num_workers: int,
                              resampled: bool) -> int:
    """Batches per rank per epoch when the caller gives none.

    Resampled: one pass's worth of data over all ranks, ``total // (world_size · group)``.
    Not resampled: the most every (rank, worker) slot can serve from its own shards without repeating
    a sample, times the number of workers, so no sample is seen twice in an epoch.
    """
    if resampled:
        n = sum(shard_counts) // (world_size * group)
    else:
        W = max(1, num_workers)
        slots = [sum(slot_shards(shard_counts, r, world_size, v, W)) // group
                 for r in range(world_size) for v in range(W)]
        n = min(slots) * W
    if n < 1:
        raise ValueError(f"the split holds too few samples ({sum(shard_counts)} in {len(shard_counts)} shards) for "
                         f"{world_size} rank(s) × {max(1, num_workers)} worker(s) × {group} per batch; "
                         f"pass batches_per_epoch= or use resampled=True")
    return n
