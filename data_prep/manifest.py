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
import re
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
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); rebuild the shards") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); rebuild the shards") from None
    check_manifest(manifest, path)
    return manifest


# Names a manifest puts into paths (the dataset in cache files and result folders, splits and shards in
# file names) are single path components: no separator, no parent, no NUL, no drive.
_NOT_A_COMPONENT = re.compile(r"[/\\\x00-\x1f]|^\.{1,2}$|^[A-Za-z]:|^~")


def check_component(value, field: str, path) -> str:
    """``value`` if it is a non-empty string usable as one path component, else a :class:`ManifestError`
    naming ``field`` of the manifest at ``path``."""
    if not isinstance(value, str) or not value or _NOT_A_COMPONENT.search(value):
        raise ManifestError(f"{path}: {field} is {value!r}, not a plain name (no /, \\, .., NUL or drive); "
                            f"the manifest is damaged or not from data_prep: rebuild the shards")
    return value


def check_manifest(manifest, path) -> None:
    """The layout of the module docstring, with the types every reader relies on; one-line
    :class:`ManifestError` naming the first field that is wrong. Every reader goes through here
    (:func:`read_manifest`), so training, evaluation and ``verify`` refuse the same manifests."""
    def fail(field: str, what: str):
        raise ManifestError(f"{path}: {field} {what}; the manifest is damaged or not from data_prep: rebuild the shards")

    def count(value, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(field, f"is {value!r}, not a count")
        return value

    if not isinstance(manifest, dict):
        fail("the top level", f"is a {type(manifest).__name__}, not an object")
    for key in ("format", "dataset", "splits", "class_names"):
        if key not in manifest:
            raise ManifestError(f"{path} lacks the key {key!r}; rebuild the shards")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"{path} has format {manifest['format']}, this code reads format {FORMAT}")
    check_component(manifest["dataset"], "dataset", path)
    names = manifest["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        fail("class_names", "is not a list of strings")
    if not isinstance(manifest["splits"], dict):
        fail("splits", "is not an object")
    for split, info in manifest["splits"].items():
        where = f"splits.{split}"
        check_component(split, f"the split name {split!r}", path)
        if not isinstance(info, dict):
            fail(where, "is not an object")
        for key in ("num_samples", "shards"):
            if key not in info:
                fail(f"{where}.{key}", "is missing")
        count(info["num_samples"], f"{where}.num_samples")
        if not isinstance(info.get("labelled", True), bool):
            fail(f"{where}.labelled", "is not true or false")
        if "class_counts" in info and (not isinstance(info["class_counts"], list) or
                                       not all(isinstance(c, int) for c in info["class_counts"])):
            fail(f"{where}.class_counts", "is not a list of counts")
        if not isinstance(info["shards"], list):
            fail(f"{where}.shards", "is not a list")
        for i, shard in enumerate(info["shards"]):
            if not isinstance(shard, dict) or not {"name", "num_samples", "sha256"} <= shard.keys():
                fail(f"{where}.shards[{i}]", "is not an object with name, num_samples and sha256")
            check_component(shard["name"], f"{where}.shards[{i}].name", path)
            count(shard["num_samples"], f"{where}.shards[{i}].num_samples")
            if not isinstance(shard["sha256"], str):
                fail(f"{where}.shards[{i}].sha256", "is not a string")


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
