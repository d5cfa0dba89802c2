"""The shard builders by name: ``python -m data_prep <name>`` and code (the reproduction driver's
miniature) build through the same entries.

A builder reads its own inputs (keyword arguments named as its sub-command's options) into
:class:`Sources`; :func:`build` writes them as shards with :func:`data_prep.shard_writer.build_dataset`.
A new source of images is one reader and one entry in :data:`BUILDERS`, plus its sub-command's
options in ``data_prep/__main__.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from data_prep import cifar10, folder, imagenet, sample_images, shard_writer, stl10
from data_prep.shard_writer import EncodeOptions, SplitSource


@dataclass(frozen=True)
class Sources:
    dataset: str  # the dataset name the manifest records
    class_names: list[str]
    splits: dict[str, SplitSource]
    options: dict  # the build settings the manifest records (a rebuild with others is refused)


@dataclass(frozen=True)
class Builder:
    read: Callable[..., Sources]
    inputs: tuple[str, ...]  # the keyword arguments of ``read``: the sub-command's option names


def _cifar10(src) -> Sources:
    return Sources("cifar10", *cifar10.sources(src), {"src": os.path.abspath(src)})


def _stl10(src) -> Sources:
    return Sources("stl10", *stl10.sources(src), {"src": os.path.abspath(src)})


def _imagenet(train_dir, val_dir, val_labels, val_meta, fraction, per_class, seed, subset_list, out,
              val_fraction, val_per_class) -> Sources:
    class_names, splits, selection = imagenet.sources(
        train_dir, val_dir, val_labels, val_meta, fraction, per_class, seed, subset_list, out_dir=out,
        val_fraction=val_fraction, val_per_class=val_per_class)
    options = {"train_dir": os.path.abspath(train_dir), "val_dir": val_dir and os.path.abspath(val_dir),
               "val_labels": val_labels, "fraction": fraction, "per_class": per_class, "subset_list": subset_list,
               "val_fraction": val_fraction, "val_per_class": val_per_class, "seed": seed, "selection": selection}
    return Sources("imagenet", class_names, splits, options)


def _folder(src, name) -> Sources:
    return Sources(name, *folder.sources(src), {"src": src})


def _digits(size, test_fraction, seed) -> Sources:
    return Sources("sklearn-digits", *sample_images.digits_sources(size, test_fraction, seed),
                   {"src": "sklearn.datasets.load_digits", "size": size, "test_fraction": test_fraction, "seed": seed})


def _skimage_crops(images, test_fraction, seed) -> Sources:
    return Sources("skimage-crops", *sample_images.skimage_crop_sources(images, test_fraction, seed),
                   {"src": "skimage.data", "images": images, "test_fraction": test_fraction, "seed": seed})


BUILDERS: dict[str, Builder] = {
    "cifar10": Builder(_cifar10, ("src",)),
    "stl10": Builder(_stl10, ("src",)),
    "imagenet": Builder(_imagenet, ("train_dir", "val_dir", "val_labels", "val_meta", "fraction", "per_class", "seed",
                                    "subset_list", "out", "val_fraction", "val_per_class")),
    "folder": Builder(_folder, ("src", "name")),
    "digits": Builder(_digits, ("size", "test_fraction", "seed")),
    "skimage-crops": Builder(_skimage_crops, ("images", "test_fraction", "seed")),
}


def build(name: str, out: str | os.PathLike, inputs: Mapping[str, Any], opts: EncodeOptions, **writing) -> dict:
    """Build the shards of builder ``name`` from ``inputs`` in ``out`` (resuming an identical earlier
    build); ``writing``: ``build_dataset``'s shard_size, workers, overwrite, progress. Returns the manifest."""
    if name not in BUILDERS:
        raise ValueError(f"unknown shard builder {name!r}; choose one of {', '.join(BUILDERS)}")
    sources = BUILDERS[name].read(**inputs)
    return shard_writer.build_dataset(out, sources.dataset, sources.options, sources.class_names, sources.splits,
                                      opts, **writing)
