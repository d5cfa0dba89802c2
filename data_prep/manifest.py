"""``manifest.json``: what a shard directory holds, and the helpers every reader uses.

Layout (format 1)::

    {"format": 1, "dataset": "cifar10", "source": {...build options...},
     "image_format": "png", "class_names": [...],
     "splits": {"train": {"num_samples": 50000, "labelled": true, "class_counts": [...],
                          "shards": [{"name": "train-000000.tar", "num_samples": 1000,
                                      "sha256": "..."}, ...],
                          "skipped": [{"input": "...", "reason": "..."}]}}}
"""
from __future__ import annotations

import json
from pathlib import Path

import storage

MANIFEST_NAME = "manifest.json"
FORMAT = 1


class ManifestError(ValueError):
    """A shard directory or its manifest is missing or malformed (one-line message)."""


def read_manifest(shard_dir: str | Path) -> dict:
    """Load ``shard_dir/manifest.json``; raise :class:`ManifestError` with one line if missing/bad.

    ``shard_dir`` may be an ``s3://``/``gs://`` URL; an unusable URL raises :class:`storage.StorageError`.
    """
    path = storage.join(shard_dir, MANIFEST_NAME)
    if not storage.isfile(path):
        raise ManifestError(
            f"no {MANIFEST_NAME} in {shard_dir}: build the shards first with "
            f"`python -m data_prep <cifar10|stl10|imagenet|folder> ... --out {shard_dir}`")
    try:
        manifest = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); rebuild the shards") from None
    for key in ("format", "dataset", "splits", "class_names"):
        if key not in manifest:
            raise ManifestError(f"{path} lacks the key {key!r}; rebuild the shards")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"{path} has format {manifest['format']}, this code reads format {FORMAT}")
    return manifest


def split_info(manifest: dict, split: str) -> dict:
    """The manifest entry of ``split``; ``ManifestError`` naming the available splits otherwise."""
    if split not in manifest["splits"]:
        raise ManifestError(
            f"split {split!r} not in this {manifest['dataset']} shard directory; "
            f"available: {', '.join(manifest['splits'])}")
    return manifest["splits"][split]




def shard_paths(shard_dir: str | Path, split: str, manifest: dict | None = None) -> list[str]:
    """Absolute paths (or URLs) of the shards of ``split``, in manifest order; errors if one is missing."""
    manifest = read_manifest(shard_dir) if manifest is None else manifest
    shard_dir = storage.resolve(shard_dir)
    present = set(storage.listdir(shard_dir))  # one listing, not a request per shard
    paths = []
    for shard in split_info(manifest, split)["shards"]:
        p = storage.join(shard_dir, shard["name"])
        if shard["name"] not in present:
            raise ManifestError(f"shard {p} listed in the manifest is missing; re-run the builder to resume")
        paths.append(p)
    if not paths:
        raise ManifestError(f"split {split!r} in {shard_dir} has no shards")
    return paths


def shard_sample_counts(manifest: dict, split: str) -> list[int]:
    """Samples per shard of ``split``, in manifest order."""
    return [int(s["num_samples"]) for s in split_info(manifest, split)["shards"]]


def split_member_name(name: str) -> tuple[str, str]:
    """A shard member's (key, extension), WebDataset's rule: the extension starts at the first dot
    of the base name (``dir/abc.seg.png`` -> ``("dir/abc", "seg.png")``)."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    return (name[:dot], name[dot + 1:]) if dot >= 0 else (name, "")
