"""Write one dataset split as WebDataset shards, atomically and resumably.

Shard ``i`` of a split always holds inputs ``[i*shard_size, (i+1)*shard_size)`` of the builder's
deterministic input order (minus skipped bad images). Each shard is written to a ``*.tmp`` file and
renamed when complete (:func:`storage.files.atomic_write`); a small record in ``DIR/.build/`` (written after the rename) says the shard is
done. A re-run therefore reuses finished shards (checked by sha256) and rewrites the rest: nothing is
duplicated or lost, whatever point the previous run died at. ``DIR`` may be an ``s3://``/``gs://`` URL
(:mod:`storage`): each shard is then uploaded whole once written, and ``manifest.json`` last.
"""
from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import webdataset as wds
from tqdm import tqdm

import storage
from data_prep import image_io
from storage.files import TMP_SUFFIX, sha256_file
from data_prep.manifest import FORMAT, MANIFEST_NAME

BUILD_DIR = ".build"


@dataclass
class SourceItem:
    """One input image: exactly one of ``array`` (uint8 [H, W, 3]) or ``path`` is set."""
    key: str
    label: int | None
    origin: str
    array: np.ndarray | None = None
    path: str | None = None


@dataclass
class SplitSource:
    """Everything needed to write one split: a fresh iterator of items and how many there are."""
    items: Callable[[], Iterable[SourceItem]]
    total: int
    labelled: bool


@dataclass
class EncodeOptions:
    fmt: str = "png"
    quality: int = 95
    resize: int | None = None


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def _encode(args) -> tuple[str, int | None, str, bytes | None, str | None]:
    item, opts = args
    try:
        if item.array is not None:
            data = image_io.encode_array(item.array, opts.fmt, opts.quality, opts.resize)
        else:
            with open(item.path, "rb") as f:
                raw = f.read()
            data = image_io.encode_file_bytes(raw, opts.fmt, opts.quality, opts.resize)
        return item.key, item.label, item.origin, data, None
    except image_io.BadImage as e:
        return item.key, item.label, item.origin, None, str(e)
    except OSError as e:
        return item.key, item.label, item.origin, None, f"cannot read ({e.strerror or e})"


def _write_shard(path: str, encoded, ext: str, num_classes: int) -> dict:
    counts = [0] * num_classes
    skipped, n = [], 0
    with storage.write_atomic(path) as f:
        with wds.TarWriter(f, encoder=False, mtime=0.0) as sink:
            for key, label, origin, data, error in encoded:
                if error is not None:
                    skipped.append({"input": origin, "reason": error})
                    continue
                sample = {"__key__": key, ext: data}
                if label is not None:
                    sample["cls"] = str(int(label)).encode()
                    counts[label] += 1
                sink.write(sample)
                n += 1
        f.flush()
        digest = sha256_file(f.name)  # the bytes about to be published
    return {"name": storage.basename(path), "num_samples": n, "sha256": digest,
            "class_counts": counts, "skipped": skipped}


def write_split(out_dir: str | Path, split: str, source: SplitSource, opts: EncodeOptions, num_classes: int,
                shard_size: int = 1000, workers: int = 1, progress: bool = True) -> dict:
    """Write (or resume) the shards of one split; returns its manifest entry."""
    records_dir = storage.join(out_dir, BUILD_DIR)
    storage.makedirs(records_dir)
    n_shards = max(1, math.ceil(source.total / shard_size))
    items = iter(source.items())
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    bar = tqdm(total=source.total, desc=f"{split}", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    records = []
    try:
        for index in range(n_shards):
            chunk = list(itertools.islice(items, shard_size))
            path = storage.join(out_dir, shard_name(split, index))
            record_path = storage.join(records_dir, shard_name(split, index) + ".json")
            if storage.isfile(record_path) and storage.isfile(path):
                record = json.loads(storage.read_text(record_path))
                if record.get("inputs") == len(chunk) and storage.sha256(path) == record["sha256"]:
                    records.append(record)
                    bar.update(len(chunk))
                    continue
            jobs = [(item, opts) for item in chunk]
            encoded = pool.imap(_encode, jobs, chunksize=8) if pool else map(_encode, jobs)

            def counted(it):
                for x in it:
                    bar.update(1)
                    yield x
            record = _write_shard(path, counted(encoded), opts.fmt, num_classes)
            record["inputs"] = len(chunk)
            storage.write_text(record_path, json.dumps(record, indent=1))
            records.append(record)
        leftover = next(items, None)
        if leftover is not None:
            raise RuntimeError(f"{split}: the source yielded more than the {source.total} inputs it announced")
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()
    counts = np.sum([r["class_counts"] for r in records], axis=0).astype(int).tolist() if num_classes else []
    return {
        "num_samples": sum(r["num_samples"] for r in records),
        "labelled": source.labelled,
        "class_counts": counts if source.labelled else [],
        "shards": [{"name": r["name"], "num_samples": r["num_samples"], "sha256": r["sha256"]} for r in records],
        "skipped": [s for r in records for s in r["skipped"]],
    }


def build_dataset(out_dir: str | Path, dataset: str, options: dict, class_names: list[str],
                  splits: dict[str, SplitSource], opts: EncodeOptions, *, shard_size: int = 1000,
                  workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write every split and then ``manifest.json``; resume an earlier identical build.

    ``options`` (the build settings) is stored in ``.build/config.json``; a directory built with other
    settings is refused unless ``overwrite``, which deletes its shards first.
    """
    out_dir = storage.resolve(out_dir)
    if storage.is_url(out_dir):
        storage.check_bucket(out_dir)
    storage.makedirs(out_dir)
    config = {"dataset": dataset, "options": options, "shard_size": shard_size,
              "image_format": opts.fmt, "quality": opts.quality, "resize": opts.resize}
    config_path = storage.join(out_dir, BUILD_DIR, "config.json")
    if overwrite:
        storage.remove_tree(storage.join(out_dir, BUILD_DIR))
        for name in storage.listdir(out_dir):
            if name.endswith(".tar") or name == MANIFEST_NAME:
                storage.remove(storage.join(out_dir, name))
    elif storage.isfile(config_path) and json.loads(storage.read_text(config_path)) != config:
        raise SystemExit(f"error: {out_dir} holds a build with other settings; pass --overwrite to "
                         f"replace it or choose another --out")
    # half-written files of a build that was killed (an exception removes its own; an object store
    # never shows a half-uploaded object)
    for folder in (out_dir, storage.join(out_dir, BUILD_DIR)):
        for name in storage.listdir(folder):
            if name.endswith(TMP_SUFFIX):
                storage.remove(storage.join(folder, name))
    storage.makedirs(storage.join(out_dir, BUILD_DIR))
    storage.write_text(config_path, json.dumps(config, indent=1))
    manifest = {"format": FORMAT, "dataset": dataset, "source": options, "image_format": opts.fmt,
                "resize": opts.resize, "class_names": list(class_names), "splits": {}}
    for split, source in splits.items():
        manifest["splits"][split] = write_split(out_dir, split, source, opts, len(class_names),
                                                shard_size=shard_size, workers=workers, progress=progress)
    storage.write_text(storage.join(out_dir, MANIFEST_NAME), json.dumps(manifest, indent=1))
    return manifest


def summary(manifest: dict) -> str:
    """Human-readable lines: samples and skipped inputs per split."""
    lines = []
    for split, info in manifest["splits"].items():
        lines.append(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shards, "
                     f"{len(info['skipped'])} skipped")
        for s in info["skipped"][:20]:
            lines.append(f"  skipped {s['input']}: {s['reason']}")
        if len(info["skipped"]) > 20:
            lines.append(f"  ... and {len(info['skipped']) - 20} more (see manifest.json)")
    return "\n".join(lines)
