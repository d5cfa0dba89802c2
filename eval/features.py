"""Frozen-encoder features of a shard split, extracted once and cached on disk.

The paper's target-task crops are deterministic (resize 232, centre crop 192, 3×3 grid of 64×64
patches; InfoMax: the 32×32 image as is), so the features of an image never change while the
encoder is frozen. Extracting them once and training the linear probe on the cache gives exactly
the probe that forwards every image every epoch, at the cost of one forward pass instead of
`epochs` of them (see `benchmarks/linear_probe.py`).

The cache key is content-based: the checkpoint file's SHA-256, the SHA-256 of the shard files as
they are on disk now (not the manifest's record of them), the task kind and `FEATURE_PROTOCOL`. A
retrained checkpoint, rebuilt shards or a damaged copy can therefore never be served features made
from other bytes. A pass that skipped samples (undecodable images, a truncated shard) is never
cached: its skipped samples are returned (and listed in `results.json`) instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

import storage
from storage.files import atomic_write
from console.progress import bar as progress_bar

# Bump when the crops or the pooling change: old cache entries then stop matching.
FEATURE_PROTOCOL = 1
KINDS = ("jigsaw", "infomax")


def kind_of(config: dict) -> str:
    """`jigsaw` or `infomax`: which evaluation input a pretraining config's encoder takes."""
    from pretrain import tasks

    task_kind = str((config.get("task") or {}).get("kind", ""))
    if task_kind not in tasks.kinds():
        raise ValueError(f"checkpoint config has task.kind={task_kind!r}; eval knows {', '.join(tasks.kinds())}")
    return tasks.spec(task_kind).eval_kind


@torch.no_grad()
def encode_batch(encoder: nn.Module, batch: dict, kind: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Features of one evaluation batch.

    jigsaw: batch["patches"] [B, 9, 3, 64, 64] -> mean of the 9 patch features [B, D] (paper, App. D).
    infomax: batch["images"] [B, 3, 32, 32] -> encoder features [B, D].
    Returns float32 [B, D] on `device` (no copy back: :func:`extract_features` does that without waiting).
    """
    # channels_last on a GPU (prepare_features converts the encoder); a no-op layout change on the CPU
    memory_format = torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format
    if kind == "jigsaw":
        patches = batch["patches"].to(device, non_blocking=True)
        b, p = patches.shape[:2]
        x = patches.flatten(0, 1).contiguous(memory_format=memory_format)
        return encoder(x).view(b, p, -1).mean(1).float()
    if kind == "infomax":
        x = batch["images"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return encoder(x).float()
    raise ValueError(f"unknown feature kind {kind!r}; use one of {KINDS}")


@contextlib.contextmanager
def full_fp32():
    """cuDNN convolutions and cuBLAS matmuls in full fp32 within (cuDNN takes TF32 by default on the
    GPUs that have it): a checkpoint's features do not depend on a device's reduced-precision paths."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@torch.no_grad()
@full_fp32()
def extract_features(
    encoder: nn.Module,
    batches: Iterable[dict],
    kind: str,
    *,
    device: torch.device | str = "cpu",
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> dict:
    """Run the frozen encoder (eval mode, no gradient) over every batch of an evaluation stream.

    batches: dicts with `patches` [B, 9, 3, 64, 64] or `images` [B, 3, H, W], `label` [B] and `key`
    (B strings). Returns {"features": float32 [N, D], "labels": int64 [N], "keys": list of N str}, on the CPU.

    On a GPU each batch's features are copied into pinned host memory asynchronously: the device is
    waited for once, at the end, not once a batch.
    """
    was_training = encoder.training
    encoder.eval()  # batch-norm must use, never update, its running statistics
    on_gpu = torch.device(device).type == "cuda"
    feats, labels, keys = [], [], []
    bar = progress_bar(total=total, desc=desc, unit="img", enabled=progress, leave=False)
    try:
        for batch in batches:
            if batch is None:  # a batch in which no image decoded
                continue
            f = encode_batch(encoder, batch, kind, device)
            host = torch.empty(f.shape, dtype=f.dtype, pin_memory=on_gpu)
            feats.append(host.copy_(f, non_blocking=on_gpu))
            labels.append(torch.as_tensor(batch["label"]).long())  # the loader's, on the host already
            keys.extend(str(k) for k in batch["key"])
            bar.update(f.shape[0])
        if on_gpu:
            torch.cuda.synchronize(device)  # the one wait: every copy above has landed
    finally:
        bar.close()
        encoder.train(was_training)
    if not feats:
        raise ValueError(f"{desc}: the evaluation stream gave no samples")
    return {"features": torch.cat(feats), "labels": torch.cat(labels), "keys": keys}


def cache_key(checkpoint_sha256: str, dataset: str, split: str, shards: list[tuple[str, str]], kind: str,
              variant: str = "", size: int = 32) -> str:
    """Hex key of one (checkpoint, shard bytes, feature protocol) combination.

    `shards`: `(file name, sha256 of its bytes as read now)` of every shard of the split. `variant`
    separates encoders that share a checkpoint file (e.g. `random-init-seed0`); `size` is the InfoMax
    image side (jigsaw crops are fixed).
    """
    blob = json.dumps(
        {"checkpoint": checkpoint_sha256, "data": {"dataset": dataset, "split": split, "shards": [list(s) for s in shards]},
         "kind": kind, "protocol": FEATURE_PROTOCOL, "variant": variant, "size": size if kind == "infomax" else None},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def shard_checksums(paths: list[str], manifest: dict, split: str) -> list[tuple[str, str]]:
    """`(name, sha256)` of the shard files as they are now; warns for each that differs from the manifest."""
    recorded = {s["name"]: s["sha256"] for s in manifest["splits"][split]["shards"]}
    out = []
    for p in paths:
        name, sha = storage.basename(p), storage.sha256(p)
        if recorded.get(name) != sha:
            warnings.warn(f"shard {p} differs from its manifest checksum (a damaged or replaced copy); "
                          f"features are keyed by the bytes read, not by the manifest", UserWarning)
        out.append((name, sha))
    return out


def cache_path(cache_dir: str | os.PathLike, key: str, dataset: str, split: str) -> Path:
    """Where the features of `key` live: `cache_dir/<dataset>-<split>-<key[:20]>.pt`."""
    return Path(cache_dir) / f"{dataset}-{split}-{key[:20]}.pt"


def load_cached(path: str | os.PathLike, key: str) -> dict | None:
    """The cached features at `path` if present and made for `key`, else None (a corrupt or foreign
    file is treated as a miss and rewritten)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or not {"features", "labels", "keys"} <= set(entry):
        return None
    return entry


def save_cached(path: str | os.PathLike, key: str, entry: dict) -> None:
    """Write features atomically (temporary file, then rename), so an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save({"key": key, "protocol": FEATURE_PROTOCOL, **entry}, f)


def cached_features(
    encoder: nn.Module,
    *,
    checkpoint_sha256: str,
    shard_dir: str | os.PathLike,
    manifest: dict,
    split: str,
    kind: str,
    cache_dir: str | os.PathLike | None,
    variant: str = "",
    size: int = 32,
    batch_size: int,
    num_workers: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Features of `split` of the shard directory: from the cache when present, else extracted and stored.

    `size`: InfoMax image side (the pretraining config's `data.size`). `cache_dir=None` disables the
    cache. Returns {"features" [N, D], "labels" [N], "keys", "skipped", "cache_hit", "cache_path"};
    `skipped` = {"samples": ["<shard>:<key>" not decodable], "shards": [damaged shards]}.
    """
    from data_prep.eval_stream import eval_loader

    from data_prep.shard_stream import pins_memory

    loader = eval_loader(str(shard_dir), split, kind=kind, batch_size=batch_size, num_workers=num_workers, size=size,
                         pin_memory=pins_memory(device, num_workers))
    dataset = loader.dataset
    key = cache_key(checkpoint_sha256, manifest["dataset"], split, shard_checksums(dataset.paths, manifest, split),
                    kind, variant, size)
    path = cache_path(cache_dir, key, manifest["dataset"], split) if cache_dir is not None else None
    if path is not None and (entry := load_cached(path, key)) is not None:
        return {"features": entry["features"], "labels": entry["labels"], "keys": list(entry["keys"]),
                "skipped": {"samples": [], "shards": []}, "cache_hit": True, "cache_path": str(path)}
    total = int(manifest["splits"][split]["num_samples"])
    entry = extract_features(encoder, loader, kind, device=device, total=total, progress=progress, desc=f"features {split}")
    read = set(entry["keys"])
    skipped = {"samples": [f"{storage.basename(p)}:{k}" for p, k, _ in dataset.entries if k not in read],
               "shards": dataset.damaged_shards}
    if path is not None and not skipped["samples"] and not skipped["shards"]:
        save_cached(path, key, entry)
    return {**entry, "skipped": skipped, "cache_hit": False, "cache_path": None if path is None else str(path)}
