"""Deterministic evaluation batches: every sample exactly once, in shard order, any number of workers.

The shards are indexed once (tar member offsets), so a map-style DataLoader can read samples by
position: batches come out in shard order whatever ``num_workers`` is. Shards may sit behind an
``s3://``/``gs://`` URL (:mod:`storage`; samples are then ranged reads).
- ``kind="jigsaw"``: squash to 232×232, centre crop 192, gapless 3×3 grid of 64×64 tiles, each patch's
  channels standardised: ``patches`` float32 [B, 9, 3, 64, 64] (tiles in natural row-major order).
- ``kind="infomax"``: ``images`` float32 [B, 3, 32, 32] normalised as the InfoMax stream in test mode.
Plus ``label`` int64 [B] (-1 when unlabelled) and ``key`` (list of str). A sample that fails to decode,
or whose ``.cls`` is not an integer, is dropped from its batch with a warning naming sample and shard
(a batch with none left is ``None``); a truncated or unreadable shard (compressed, or a member above
:data:`data_prep.shard_tar.MAX_MEMBER_MB`) keeps the samples stored before the damage, is named in a
warning and in ``damaged_shards``.
"""
from __future__ import annotations

import tarfile
import warnings

import numpy as np
import torch

import storage
from data_prep import jigsaw, shard_tar
from data_prep.image_io import decode_resized
from data_prep.infomax_stream import normalise
from data_prep.manifest import read_manifest, shard_paths, split_member_name
from data_prep.shard_stream import CorruptSampleWarning

KINDS = ("jigsaw", "infomax")


def index_shard(path: str) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], str | None]:
    """``([(key, {ext: (byte offset, size)})], damage)`` of a shard, in stored order.

    ``damage`` is None for an intact tar, else one line saying what cut the index short; the samples
    whose members lie wholly before the damage are kept (the last, possibly incomplete one is dropped).
    """
    samples: list = []
    try:
        with storage.open_read(path) as f:
            file_size = f.seek(0, 2)
            f.seek(0)
            with shard_tar.open_tar(f, path, stream=False) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    shard_tar.check_member(member, path)
                    if member.offset_data + member.size > file_size:
                        raise tarfile.ReadError(f"member {member.name} ends past the end of the file")
                    key, ext = split_member_name(member.name)
                    if not samples or samples[-1][0] != key:
                        samples.append((key, {}))
                    samples[-1][1][ext] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        return samples[:-1], f"{type(e).__name__}: {e}"
    return samples, None


class ShardIndexDataset(torch.utils.data.Dataset):
    """Map-style view of a split's shards: item ``i`` -> (key, processed image or None, label)."""

    def __init__(self, shard_dir, split: str, kind: str, size: int = 32):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        manifest = read_manifest(shard_dir)
        self.paths = shard_paths(shard_dir, split, manifest)
        self.kind, self.size = kind, size
        self.entries, self.damaged_shards = [], []
        for p in self.paths:
            samples, damage = index_shard(p)
            self.entries += [(p, key, files) for key, files in samples]
            if damage is not None:
                self.damaged_shards.append({"shard": p, "problem": damage, "samples_kept": len(samples)})
                warnings.warn(f"shard {p} is damaged ({damage}); evaluating the {len(samples)} sample(s) "
                              f"before the damage", CorruptSampleWarning)
        self._files: dict = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, path: str, offset: int, size: int) -> bytes:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = storage.open_read(path)
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, i: int):
        path, key, files = self.entries[i]
        ext = next((e for e in ("jpg", "png", "jpeg") if e in files), None)
        label = -1
        try:
            if "cls" in files:
                text = self._read(path, *files["cls"])
                try:
                    label = int(text)
                except ValueError:
                    raise ValueError(f"its .cls label {text[:20]!r} is not an integer") from None
            if ext is None:
                raise KeyError(f"no .jpg/.png (found {sorted(files)})")
            data = self._read(path, *files[ext])
            if self.kind == "jigsaw":
                image = decode_resized(data, jigsaw.EVAL_RESIZE)
                o = (jigsaw.EVAL_RESIZE - jigsaw.EVAL_CROP) // 2
                x = jigsaw.grid_tiles(np.ascontiguousarray(image[o:o + jigsaw.EVAL_CROP, o:o + jigsaw.EVAL_CROP]))
            else:
                x = decode_resized(data, self.size)
        except Exception as e:
            warnings.warn(f"skipping sample {key!r} of {path}: {type(e).__name__}: {e}", CorruptSampleWarning)
            x = None
        return key, x, label

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def collate_eval(items: list, kind: str) -> dict | None:
    items = [it for it in items if it[1] is not None]
    if not items:
        return None  # every sample of the batch failed to decode (each was warned about)
    stacked = np.stack([x for _, x, _ in items])
    batch = {"patches": jigsaw.standardise(stacked)} if kind == "jigsaw" else {"images": normalise(stacked)}
    batch["label"] = torch.tensor([lab for _, _, lab in items], dtype=torch.int64)
    batch["key"] = [key for key, _, _ in items]
    return batch


class _Collate:
    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, items: list) -> dict:
        return collate_eval(items, self.kind)


def eval_loader(shard_dir, split: str, *, kind: str = "jigsaw", batch_size: int, num_workers: int = 0,
                size: int = 32, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """DataLoader over ``split`` in shard order (see the module docstring for the batch layout);
    ``pin_memory`` for asynchronous copies to a GPU."""
    dataset = ShardIndexDataset(shard_dir, split, kind, size=size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=_Collate(kind), drop_last=False, pin_memory=pin_memory)
