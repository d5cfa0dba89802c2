"""``python -m data_prep verify DIR`` (or a ``s3://``/``gs://`` URL): re-read every shard and check it against the manifest.

Checks per split: each listed shard exists and has the recorded sha256, sample counts per shard and
in total, unique keys, one decodable image per sample, a ``.cls`` label in range exactly when the split
is labelled, and the per-class counts. Returns the list of problems (empty when all is well).
"""
from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

from tqdm import tqdm

import storage
from data_prep import shard_tar
from data_prep.image_io import BadImage, open_fully
from data_prep.manifest import ManifestError, read_manifest, split_member_name

IMAGE_EXTS = ("png", "jpg")


def _samples(path: str, max_member_mb: float = shard_tar.MAX_MEMBER_MB):
    """Yield (key, {ext: bytes}) from a shard, in order, grouping consecutive members by key
    (:mod:`data_prep.shard_tar`: plain tar only, members up to ``max_member_mb``)."""
    key, files = None, {}
    with storage.open_read(path) as f, shard_tar.open_tar(f, path, stream=True) as tar:
        for member in tar:
            if not member.isfile():
                continue
            shard_tar.check_member(member, path, max_member_mb)
            k, ext = split_member_name(member.name)
            if k != key:
                if key is not None:
                    yield key, files
                key, files = k, {}
            files[ext] = tar.extractfile(member).read()
            tar.members = []  # a stream's TarFile would otherwise keep every header it read
    if key is not None:
        yield key, files


def verify(shard_dir: str | Path, decode: bool = True, progress: bool = False,
           max_member_mb: float = shard_tar.MAX_MEMBER_MB) -> list[str]:
    """Return one line per mismatch between ``shard_dir``'s shards and its manifest; a shard member
    above ``max_member_mb`` MB (or a compressed shard) is one, read no further."""
    try:
        manifest = read_manifest(shard_dir)
    except (ManifestError, storage.StorageError) as e:
        return [str(e)]
    n_classes = len(manifest["class_names"])
    problems: list[str] = []
    for split, info in manifest["splits"].items():
        keys: set[str] = set()
        counts: Counter = Counter()
        total = 0
        for shard in tqdm(info["shards"], desc=f"verify {split}", disable=not progress):
            path = storage.join(shard_dir, shard["name"])
            if not storage.isfile(path):
                problems.append(f"{split}: shard {shard['name']} is missing")
                continue
            if storage.sha256(path) != shard["sha256"]:
                problems.append(f"{split}: shard {shard['name']} sha256 differs from the manifest (modified or corrupt)")
            n = 0
            try:
                for key, files in _samples(path, max_member_mb):
                    n += 1
                    where = f"{split}: {shard['name']} sample {key}"
                    if key in keys:
                        problems.append(f"{where}: duplicate key")
                    keys.add(key)
                    images = [e for e in IMAGE_EXTS if e in files]
                    if len(images) != 1:
                        problems.append(f"{where}: expected one .png or .jpg, found {sorted(files)}")
                    elif decode:
                        try:
                            open_fully(files[images[0]])
                        except BadImage as e:
                            problems.append(f"{where}: image {e}")
                    if info["labelled"]:
                        try:
                            label = int(files["cls"])
                        except (KeyError, ValueError):
                            problems.append(f"{where}: missing or unreadable .cls")
                            continue
                        if not 0 <= label < n_classes:
                            problems.append(f"{where}: label {label} outside 0..{n_classes - 1}")
                        counts[label] += 1
                    elif "cls" in files:
                        problems.append(f"{where}: .cls in an unlabelled split")
            except (tarfile.TarError, OSError, EOFError) as e:
                problems.append(f"{split}: {e}" if isinstance(e, shard_tar.ShardFormatError)
                                else f"{split}: shard {shard['name']} is not a readable tar ({e})")
            if n != shard["num_samples"]:
                problems.append(f"{split}: shard {shard['name']} holds {n} samples, manifest says {shard['num_samples']}")
            total += n
        if total != info["num_samples"]:
            problems.append(f"{split}: {total} samples found, manifest says {info['num_samples']}")
        if info["labelled"]:
            found = [counts.get(i, 0) for i in range(n_classes)]
            if found != list(info["class_counts"]):
                problems.append(f"{split}: per-class counts {found} differ from the manifest's {info['class_counts']}")
    return problems
