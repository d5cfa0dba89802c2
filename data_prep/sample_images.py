"""Real images that ship inside installed packages, for demos, tests and benchmarks offline.

- ``digits``: scikit-learn's handwritten digits (1,797 real 8×8 scans, 16 grey levels, 10 classes),
  scaled to ``size``×``size`` RGB with bilinear interpolation; a stratified, seeded train/test split.
- ``skimage-crops``: random crops (about 120–500 px a side) of scikit-image's sample photographs
  (``skimage.data``), labelled by the photograph they come from. Real photos, but few distinct
  scenes: fine for exercising the jigsaw pipeline and its throughput, not for a benchmark of accuracy.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from data_prep.shard_writer import SourceItem, SplitSource

SKIMAGE_SAMPLES = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "retina", "colorwheel", "cat", "camera", "coins", "moon", "brick", "grass", "gravel",
                   "page", "text"]


def _split(arrays: list[np.ndarray], labels: np.ndarray, keys: list[str], test_fraction: float,
           seed: int) -> dict[str, SplitSource]:
    """Stratified seeded split of in-memory images into ``train`` and ``test`` sources."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.permutation(idx)[: int(round(len(idx) * test_fraction))]] = True

    def source(split: str, chosen: np.ndarray) -> SplitSource:
        idx = np.flatnonzero(chosen)
        return SplitSource(lambda: (SourceItem(key=keys[i], label=int(labels[i]), origin=f"{split}[{keys[i]}]",
                                               array=arrays[i]) for i in idx), len(idx), labelled=True)
    return {"train": source("train", ~test), "test": source("test", test)}


def digits_sources(size: int = 32, test_fraction: float = 0.2, seed: int = 0):
    """Class names and train/test sources of scikit-learn's digits as ``size``×``size`` RGB."""
    from sklearn.datasets import load_digits

    d = load_digits()
    arrays = []
    for image in d.images:  # float 0..16
        grey = Image.fromarray(np.uint8(np.round(image * (255 / 16))), mode="L").resize((size, size), Image.BILINEAR)
        arrays.append(np.repeat(np.asarray(grey)[:, :, None], 3, axis=2))
    keys = [f"digit{int(y)}_{i:04d}" for i, y in enumerate(d.target)]
    return [str(c) for c in d.target_names], _split(arrays, np.asarray(d.target), keys, test_fraction, seed)


def random_sources(n_images: int, n_classes: int, size: int, seed: int = 0, smooth: bool = False):
    """Class names and a train source of ``n_images`` random ``size``×``size`` RGB images, image i of class
    ``i % n_classes``: stand-in data for timing the pipeline (``smooth``: upscaled from 8×8 noise, so
    that JPEG decodes cost what photographs cost)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(n_images):
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3) if smooth else (size, size, 3), dtype=np.uint8))
        arrays.append(np.asarray(image.resize((size, size), Image.BICUBIC) if smooth else image))
    items = lambda: (SourceItem(key=f"random_{i:05d}", label=i % n_classes, origin=f"random[{i}]", array=arrays[i])
                     for i in range(n_images))
    return [f"c{c}" for c in range(n_classes)], {"train": SplitSource(items, n_images, labelled=True)}


def skimage_photos() -> dict[str, np.ndarray]:
    """The scikit-image sample photographs as uint8 RGB arrays [H, W, 3], by name."""
    import skimage.data

    photos = {}
    for name in SKIMAGE_SAMPLES:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, 2)
        photos[name] = np.ascontiguousarray(image[:, :, :3].astype(np.uint8))
    return photos


def random_crops(photos: dict[str, np.ndarray], n_images: int, seed: int = 0):
    """Yield ``n_images`` (photo name, crop uint8 [h, w, 3]) crops: width 150–500 px, height 0.8–1.25× that (capped by the photo)."""
    rng = np.random.default_rng(seed)
    names = list(photos)
    for k in range(n_images):
        name = names[k % len(names)]
        image = photos[name]
        h, w = image.shape[:2]
        side = int(rng.integers(min(150, h, w), min(500, h, w) + 1))
        ch = min(h, int(side * rng.uniform(0.8, 1.25)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - side + 1)
        yield name, image[y:y + ch, x:x + side]


def skimage_crop_sources(n_images: int = 1000, test_fraction: float = 0.2, seed: int = 0):
    """Class names (photo names) and train/test sources of random crops of the skimage photos."""
    photos = skimage_photos()
    arrays, labels, keys = [], [], []
    for k, (name, crop) in enumerate(random_crops(photos, n_images, seed)):
        arrays.append(np.ascontiguousarray(crop))
        labels.append(SKIMAGE_SAMPLES.index(name))
        keys.append(f"{name}_crop_{k:05d}")
    return list(SKIMAGE_SAMPLES), _split(arrays, np.asarray(labels), keys, test_fraction, seed)
