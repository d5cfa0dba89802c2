"""Tiny shard directories for the tests and the benchmarks, written by data_prep's own builders.

- :func:`synthetic_shards`: three classes of flat colour plus noise (a probe can learn them), PNG.
- :func:`folder_shards`: random images in class folders, through the ``folder`` builder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.builders import build
from data_prep.manifest import MANIFEST_NAME
from data_prep.shard_writer import EncodeOptions, SourceItem, SplitSource, build_dataset

CLASSES = ["red", "green", "blue"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.int16)


def synthetic_shards(out: Path, size: int, counts: dict[str, int], seed: int = 0, shard_size: int = 20) -> Path:
    """``synthetic`` shards in ``out``: {split: number of images} of ``size``×``size``, image i of class
    ``i % 3`` (its colour ± 40 of noise)."""
    rng = np.random.default_rng(seed)

    def source(split: str, n: int) -> SplitSource:
        labels = np.arange(n) % len(CLASSES)
        noise = rng.integers(-40, 41, size=(n, size, size, 3))
        images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return SplitSource(lambda: (SourceItem(key=f"{split}_{i:04d}", label=int(labels[i]), origin=f"{split}[{i}]",
                                               array=images[i]) for i in range(n)), n, labelled=True)

    build_dataset(out, "synthetic", {"seed": seed, "size": size}, CLASSES, {s: source(s, n) for s, n in counts.items()},
                  EncodeOptions(fmt="png"), shard_size=shard_size, progress=False)
    return out


def folder_shards(root: Path, n_images: int, n_classes: int, size: int, shard_size: int, fmt: str = "png",
                  smooth: bool = False) -> Path:
    """``n_images`` random ``size``×``size`` RGB images in ``root/src``, image i in class folder
    ``c{i % n_classes}``, built into ``root/shards`` by the ``folder`` builder (kept if already built);
    ``smooth``: upscaled from 8×8 noise, so that JPEG decodes cost what photographs cost."""
    out = root / "shards"
    if (out / MANIFEST_NAME).is_file():
        return out
    rng = np.random.default_rng(0)
    for i in range(n_images):
        folder = root / "src" / f"c{i % n_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3) if smooth else (size, size, 3), dtype=np.uint8))
        (image.resize((size, size), Image.BICUBIC) if smooth else image).save(folder / f"{i}.{fmt}", quality=90)
    build("folder", out, {"src": [str(root / "src")], "name": "folder"}, EncodeOptions(fmt=fmt), shard_size=shard_size,
          progress=False)
    return out
