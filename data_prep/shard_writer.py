"""Write one dataset split as WebDataset shards, atomically and resumably.

Shard ``i`` of a split always holds inputs ``[i*shard_size, (i+1)*shard_size)`` of the builder's
deterministic input order (minus skipped bad images). Each shard is written to a ``*.tmp`` file and
renamed when complete (:func:`data_prep.files.atomic_write`); a small record in ``DIR/.build/`` (written after the rename) says the shard is
done. A re-run therefore reuses finished shards (checked by sha256) and rewrites the rest: nothing is
duplicated or lost, whatever point the previous run died at.
"""
from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import webdataset as wds
from tqdm import tqdm

from data_prep import image_io
from data_prep.files import TMP_SUFFIX, atomic_write, atomic_write_text, sha256_file
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


def _write_shard(path: Path, encoded, ext: str, num_classes: int) -> dict:
    counts = [0] * num_classes
    skipped, n = [], 0
    with atomic_write(path) as f:
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
    return {"name": path.name, "num_samples": n, "sha256": sha256_file(path),
            "class_counts": counts, "skipped": skipped}


def write_split(out_dir: Path, split: str, source: SplitSource, opts: EncodeOptions, num_classes: int,
                shard_size: int = 1000, workers: int = 1, progress: bool = True) -> dict:
    """Write (or resume) the shards of one split; returns its manifest entry."""
    out_dir = Path(out_dir)
    records_dir = out_dir / BUILD_DIR
    records_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(source.total / shard_size))
    items = iter(source.items())
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    bar = tqdm(total=source.total, desc=f"{split}", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    records = []
    try:
        for index in range(n_shards):
            chunk = list(itertools.islice(items, shard_size))
            path = out_dir / shard_name(split, index)
            record_path = records_dir / (path.name + ".json")
            if record_path.is_file() and path.is_file():
                record = json.loads(record_path.read_text())
                if record.get("inputs") == len(chunk) and sha256_file(path) == record["sha256"]:
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
            atomic_write_text(record_path, json.dumps(record, indent=1))
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"dataset": dataset, "options": options, "shard_size": shard_size,
              "image_format": opts.fmt, "quality": opts.quality, "resize": opts.resize}
    config_path = out_dir / BUILD_DIR / "config.json"
    if overwrite:
        shutil.rmtree(out_dir / BUILD_DIR, ignore_errors=True)
        for p in list(out_dir.glob("*.tar")) + [out_dir / MANIFEST_NAME]:
            p.unlink(missing_ok=True)
    elif config_path.is_file() and json.loads(config_path.read_text()) != config:
        raise SystemExit(f"error: {out_dir} holds a build with other settings; pass --overwrite to "
                         f"replace it or choose another --out")
    # half-written files of a build that was killed (an exception removes its own)
    for p in list(out_dir.glob(f"*{TMP_SUFFIX}")) + list(out_dir.glob(f"{BUILD_DIR}/*{TMP_SUFFIX}")):
        p.unlink(missing_ok=True)
    (out_dir / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, json.dumps(config, indent=1))
    manifest = {"format": FORMAT, "dataset": dataset, "source": options, "image_format": opts.fmt,
                "resize": opts.resize, "class_names": list(class_names), "splits": {}}
    for split, source in splits.items():
        manifest["splits"][split] = write_split(out_dir, split, source, opts, len(class_names),
                                                shard_size=shard_size, workers=workers, progress=progress)
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))
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
