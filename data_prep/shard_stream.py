"""The engine shared by the training streams: shards -> samples -> groups -> batches, per rank/worker.

Built from webdataset's own stages (``ResampledShards`` or ``SimpleShardList``, its tar expander and
key grouper, ``shuffle``) inside one ``DataPipeline`` per (rank, worker), followed by decoding, grouping
and the task's batch maker. Shards are opened through :mod:`storage`, so a shard directory
may be an ``s3://``/``gs://`` URL, streamed by fsspec (whose clients retry transient errors). Each rank yields exactly ``batches_per_epoch`` batches (DDP never waits at an epoch
end); corrupt samples are skipped with a warning and counted, never crash a run. A split that yields
nothing decodable (as many consecutive failures as it has samples, or every shard unreadable in turn)
raises :class:`UndecodableSplitError` instead of looping forever over resampled shards.
"""
from __future__ import annotations

import functools
import random
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
import webdataset as wds

import storage
from data_prep import shard_tar, sharding
from data_prep.manifest import read_manifest, shard_paths, shard_sample_counts


class CorruptSampleWarning(UserWarning):
    """A sample in a shard could not be decoded and was skipped."""


class UndecodableSplitError(RuntimeError):
    """A split whose shards gave no decodable sample for a whole pass: the data, not the run, is broken."""


# Warnings per stream before they thin out to one per LOG_EVERY skips (a broken split must not flood logs).
WARN_FIRST = 10
LOG_EVERY = 1000


def _open_shards(src: Iterator[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's ``url_opener`` through :func:`storage.open_read` (local paths and URLs).

    A :class:`~storage.StorageError` (no credentials, no access, a store still failing after
    its client's retries) ends the stream: skipping would spin over shards none can read.
    """
    for source in src:
        try:
            stream = storage.open_read(source["url"])
        except storage.StorageError:
            raise
        except Exception as exn:
            if handler(exn):
                continue
            break
        yield {**source, "stream": stream}


def tar_samples(src: Iterator[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """``{"url": shard}`` dicts -> samples ``{"__key__", "__url__", ext: bytes}`` (webdataset's
    ``tarfile_samples``, with shards opened by :func:`_open_shards` and read by
    :mod:`data_prep.shard_tar`: plain tar only, members up to its ``MAX_MEMBER_MB``)."""
    return wds.tariterators.group_by_keys(_tar_members(_open_shards(src, handler), handler), handler=handler)


def _tar_members(shards: Iterator[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """``{"fname", "data", "__url__"}`` per regular member, then ``{}`` at each shard's end (so that
    samples of two shards never merge). A shard that fails goes to ``handler`` from where it failed."""
    for source in shards:
        url = source["url"]
        try:
            with source["stream"] as f, shard_tar.open_tar(f, url, stream=True) as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    shard_tar.check_member(member, url)
                    yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": url}
                    tar.members = []  # a stream's TarFile would otherwise keep every header it read
        except Exception as exn:
            if not handler(exn):
                break
        yield {}


class ShardBatchStream(torch.utils.data.IterableDataset):
    """Yields ready batches (dicts of tensors); wrap it in a DataLoader with ``batch_size=None``.

    decode(sample dict of bytes) -> item, raising on bad data; collate(list of items, rng) -> dict.
    """

    def __init__(self, shard_dir: str, split: str, *, group_size: int, decode: Callable[[dict], Any],
                 collate: Callable[[list, np.random.Generator], dict], train: bool, seed: int, epoch: int,
                 batches_per_epoch: int | None, num_workers: int, rank: int | None, world_size: int | None,
                 resampled: bool, skip_batches: int = 0, shuffle_buffer: int = 1000, endless: bool = False):
        super().__init__()
        self.endless = endless
        manifest = read_manifest(shard_dir)
        self.urls = shard_paths(shard_dir, split, manifest)
        self.counts = shard_sample_counts(manifest, split)
        self.manifest = manifest
        self.rank, self.world_size = sharding.resolve_rank(rank, world_size)
        self.num_workers = max(1, num_workers)
        self.resampled = resampled
        if not resampled and len(self.urls) < self.world_size * self.num_workers:
            raise ValueError(
                f"{split} has {len(self.urls)} shard(s) but {self.world_size} rank(s) × {self.num_workers} "
                f"worker(s) each need their own when resampled=False; use resampled=True or rebuild with a "
                f"smaller --shard-size")
        self.batches_per_epoch = batches_per_epoch or sharding.default_batches_per_epoch(
            self.counts, group_size, self.world_size, self.num_workers, resampled)
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches={skip_batches} outside 0..{self.batches_per_epoch}")
        self.group_size, self.decode, self.collate = group_size, decode, collate
        self.train, self.seed, self.epoch = train, seed, epoch
        self.skip_batches, self.shuffle_buffer = skip_batches, shuffle_buffer
        self.corrupt = 0  # samples skipped in this process (per worker when num_workers > 0)
        self.split = split
        # Resampled (or repeated) shards never run dry, so a split with nothing decodable would loop
        # forever: give up after a pass's worth of consecutive failures, or after every shard failed
        # to open 20 times in a row (a good shard among n is then missed with odds e^-20).
        self.max_bad_samples = max(1, sum(self.counts))
        self.max_bad_shards = 20 * len(self.urls)
        self._bad_samples = self._bad_shards = 0

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip_batches

    def _samples(self, epoch: int, virtual: int, W: int) -> Iterator[dict]:
        stream_seed = sharding.derive_seed(self.seed, epoch, self.rank, virtual)
        if self.resampled:
            # webdataset draws shards with random.Random(make_seed(worker_seed(), epoch, seed)) when deterministic
            shards = wds.ResampledShards(self.urls, seed=stream_seed, worker_seed=lambda: 0, deterministic=True)
            pipeline = wds.DataPipeline(shards)
        else:
            mine = sharding.slot_shards(self.urls, self.rank, self.world_size, virtual, W)
            pipeline = wds.DataPipeline(wds.SimpleShardList(mine, seed=stream_seed if self.train else None))
            pipeline.repeat()  # a slot that runs dry (corrupt samples, a long epoch) starts over
        pipeline.append(functools.partial(tar_samples, handler=self._unreadable_shard))
        pipeline.append(self._shards_readable)
        if self.train and self.shuffle_buffer > 1:
            pipeline.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                                        rng=random.Random(stream_seed)))
        return iter(pipeline)

    def _unreadable_shard(self, exn: Exception) -> bool:
        """webdataset's handler for a shard that cannot be read (truncated tar, missing file)."""
        self._bad_shards += 1
        if self._bad_shards <= WARN_FIRST or self._bad_shards % LOG_EVERY == 0:
            warnings.warn(f"skipping unreadable shard data: {exn!r}", CorruptSampleWarning)
        if self._bad_shards >= self.max_bad_shards:
            raise self._undecodable(f"{self._bad_shards} shard reads in a row failed")
        return True

    def _shards_readable(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self._bad_shards = 0
            yield sample

    def _undecodable(self, what: str) -> UndecodableSplitError:
        folder = self.urls[0].rsplit("/", 1)[0]
        shards = ", ".join(u.rsplit("/", 1)[-1] for u in self.urls[:5]) + (" ..." if len(self.urls) > 5 else "")
        return UndecodableSplitError(
            f"split {self.split!r} of {folder} gives no decodable images ({what}; shards {shards}); "
            f"check them with `python -m data_prep verify {folder}`")

    def _groups(self, samples: Iterator[dict]) -> Iterator[list]:
        group: list = []
        for sample in samples:
            try:
                item = self.decode(sample)
            except Exception as e:  # a corrupt image must never end a run
                self.corrupt += 1
                self._bad_samples += 1
                if self.corrupt <= WARN_FIRST or self.corrupt % LOG_EVERY == 0:
                    warnings.warn(f"skipping sample {sample.get('__key__')!r} of {sample.get('__url__')}: "
                                  f"{type(e).__name__}: {e} ({self.corrupt} skipped so far)", CorruptSampleWarning)
                if self._bad_samples >= self.max_bad_samples:
                    raise self._undecodable(f"{self._bad_samples} samples in a row failed to decode") from None
                continue
            self._bad_samples = 0
            group.append(item)
            if len(group) == self.group_size:
                yield group
                group = []

    def __iter__(self) -> Iterator[dict]:
        """One epoch from ``epoch`` after ``skip_batches``; with ``endless`` the epochs after it follow.

        Epochs after the first run on in the same worker processes, so a training loop never pays for
        new workers and refilled shuffle buffers at an epoch's end. The DataLoader hands out the g-th
        batch from worker ``g % W``; an epoch that starts after ``done`` batches of this iteration is
        therefore dealt out from worker ``done % W`` on, which is the rotation a resume uses.
        """
        worker, W = sharding.loader_worker()
        if W != self.num_workers:
            raise RuntimeError(f"the stream was built for {self.num_workers} worker(s) but runs in {W}")
        epoch, skip, done = self.epoch, self.skip_batches, 0
        while True:
            yield from self._epoch(epoch, skip, sharding.virtual_worker(worker, W, skip - done), W)
            if not self.endless:
                return
            epoch, skip, done = epoch + 1, 0, done + self.batches_per_epoch - skip

    def _epoch(self, epoch: int, skip: int, virtual: int, W: int) -> Iterator[dict]:
        n_mine = sharding.quota(self.batches_per_epoch, virtual, W)
        skip_mine = sharding.quota(skip, virtual, W)
        groups = self._groups(self._samples(epoch, virtual, W))
        for j in range(n_mine):
            group = next(groups, None)
            if group is None:
                raise RuntimeError(f"rank {self.rank} worker {virtual}: no decodable samples left in its shards")
            if j < skip_mine:
                continue
            b = virtual + j * W  # the global batch index within this rank's epoch
            yield self.collate(group, np.random.default_rng([self.seed, epoch, self.rank, b]))


def pins_memory(device: torch.device | str, loader_workers: int) -> bool:
    """Whether a loader pins its batches: for a CUDA device, and only when loader processes fill the
    pinned pages while the step runs (with none, pinning is one more copy in the step's own time)."""
    return torch.device(device).type == "cuda" and loader_workers > 0


class BatchLoader:
    """An epoch of batches from a :class:`ShardBatchStream`, through a DataLoader when num_workers > 0.

    ``len()`` is the number of batches this epoch will yield (the stream's ``epoch`` and
    ``skip_batches`` say which epoch, and where in it to resume). ``pin_memory`` applies to the
    DataLoader's batches, so only with ``num_workers > 0`` (:func:`pins_memory` says why).
    """

    def __init__(self, stream: ShardBatchStream, num_workers: int, pin_memory: bool = False):
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[dict]:
        if self.num_workers == 0:
            return iter(self.stream)
        return iter(torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=False, prefetch_factor=2))


class ZippedStreams(torch.utils.data.IterableDataset):
    """Several :class:`ShardBatchStream` side by side: item ``g`` is the tuple of every stream's ``g``-th batch.

    The streams of one training rank's virtual shards (each built as ``rank=v, world_size=V``) move in
    lockstep, one batch each a step, so one DataLoader and its worker processes serve them all: inside a
    loader worker every stream yields that worker's share of its batches, so the tuples come out in order
    too. All streams must have the same epoch length, start batch and number of loader workers.
    """

    def __init__(self, streams: list[ShardBatchStream]):
        super().__init__()
        if not streams:
            raise ValueError("ZippedStreams needs at least one stream")
        shapes = {(s.batches_per_epoch, s.skip_batches, s.num_workers, s.epoch) for s in streams}
        if len(shapes) != 1:
            raise ValueError(f"zipped streams must share epoch length, start and loader workers, got {sorted(shapes)}")
        self.streams = streams
        self.batches_per_epoch = streams[0].batches_per_epoch

    def __len__(self) -> int:
        return len(self.streams[0])

    def __iter__(self) -> Iterator[tuple]:
        return zip(*(iter(s) for s in self.streams))
