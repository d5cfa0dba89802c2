"""Throughput of the jigsaw stream against decode-only and a naive per-file pipeline, per core.

Real photos: scikit-image's sample images (``skimage.data``) cut into many random crops (kept at their
crop size, 150-500 px a side, JPEG q90), named ``<sample>/<sample>_crop_NNNN.jpg``, and written as
shards by this project's own ``folder`` builder. Then, each in this one process with one torch thread:

  (a) decode only: read the shards with webdataset and decode every JPEG to RGB (PIL);
  (a') decode + squash to 292×292 (what the jigsaw stream does before cutting tiles);
  (b) the jigsaw stream (``jigsaw_loader``, 10 images × 16 permutations a batch, training mode);
  (c) a naive pipeline: torchvision ``ImageFolder`` over the JPEG files + PIL + per-patch NumPy float
      work, producing the same 16 scrambled 9-tile puzzles per image, DataLoader batch of 10;
  (b'), (a'') the same stream and decode on shards stored pre-resized to 292×292 (``--resize 292``);
  (b'') the same with ``gather=False``: each image's 9 tiles once plus the permutations, which is
      what pretraining reads (``data.unique_tiles``), instead of 160 materialised puzzles;
  (a3), (b3) decode only and the jigsaw stream on the same shards uploaded to an S3 server on
      127.0.0.1 (moto's server mode, in its own process: ``tests.support.local_s3``, as the tests use;
      ``pip install -e .[dev]``), read through fsspec/s3fs as ``data.shards=s3://...`` is: the client's
      cost of object storage, with no network latency (img/s/core counts this process only; wall time
      includes waiting for the server).

Rates are images per CPU-second of this process (= per core; the machine may be shared, so wall time
is printed too). One image = one 9-tile puzzle set, scrambled 16 ways = 16 puzzles.

    python benchmarks/stream_throughput.py --images 1500 --batches 60
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

def make_crops(root: Path, n_images: int, seed: int = 0) -> int:
    """Write ``n_images`` random crops of the skimage sample images as class folders of JPEGs."""
    from data_prep.sample_images import random_crops, skimage_photos

    for k, (name, crop) in enumerate(random_crops(skimage_photos(), n_images, seed)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(root / name / f"{name}_crop_{k:05d}.jpg", quality=90)
    return n_images


def timed(fn) -> tuple[int, float, float]:
    """Run ``fn() -> items``; return (items, cpu seconds, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    n = fn()
    return n, time.process_time() - c0, time.perf_counter() - w0


def decode_only(shard_dir: Path | str, limit: int, resize: int | None) -> int:
    import webdataset as wds
    from data_prep.image_io import decode_resized, decode_rgb
    from data_prep.manifest import shard_paths
    from data_prep.shard_stream import tar_samples
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_paths(shard_dir, "train")),
                                functools.partial(tar_samples, handler=wds.reraise_exception))
    n = 0
    for sample in pipeline:
        if resize:
            decode_resized(sample["jpg"], resize)
        else:
            np.asarray(decode_rgb(sample["jpg"]))
        n += 1
        if n == limit:
            break
    return n


def jigsaw_stream(shard_dir: Path | str, batches: int, perms: np.ndarray, gather: bool = True) -> int:
    from data_prep.jigsaw_stream import jigsaw_loader
    loader = jigsaw_loader(shard_dir, permutations=perms, batches_per_epoch=batches, seed=0, rank=0, world_size=1,
                           gather=gather)
    n = 0
    for batch in loader:
        n += int(batch["image_index"].max()) + 1
    return n


class NaiveJigsaw:
    """Per image: PIL resize, random crop, grayscale, 9 random tiles, NumPy float standardisation per
    patch, 16 scrambled copies: the straightforward way to write the same task."""

    def __init__(self, perms: np.ndarray, seed: int = 0):
        self.perms = perms
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = img.resize((292, 292), Image.BILINEAR)
        y0, x0 = self.rng.integers(0, 38, size=2)
        img = img.crop((x0, y0, x0 + 255, y0 + 255))
        arr = np.asarray(img, dtype=np.float32)
        if self.rng.random() < 0.66:
            arr = np.repeat(arr.mean(2, keepdims=True), 3, 2)
        tiles = []
        for t in range(9):
            oy, ox = self.rng.integers(0, 22, size=2)
            y, x = (t // 3) * 85 + oy, (t % 3) * 85 + ox
            patch = arr[y:y + 64, x:x + 64].transpose(2, 0, 1)
            mean = patch.mean(axis=(1, 2), keepdims=True)
            std = patch.std(axis=(1, 2), keepdims=True)
            tiles.append((patch - mean) / np.sqrt(std ** 2 + 1e-5))
        tiles = np.stack(tiles)
        chosen = self.rng.choice(len(self.perms), size=16, replace=False)
        return np.stack([tiles[self.perms[c]] for c in chosen])  # [16, 9, 3, 64, 64]


def naive_pipeline(src_dir: Path, batches: int, perms: np.ndarray) -> int:
    from torchvision.datasets import ImageFolder
    dataset = ImageFolder(str(src_dir), transform=NaiveJigsaw(perms))
    loader = torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    n = 0
    for k, (x, _) in enumerate(loader):
        n += len(x)
        if k + 1 == batches:
            break
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500, help="number of skimage crops to write")
    ap.add_argument("--batches", type=int, default=60, help="jigsaw batches (10 images each) to time")
    ap.add_argument("--workdir", help="where to put crops and shards (default: a temporary directory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from data_prep.__main__ import main as data_prep_main
    from data_prep.manifest import MANIFEST_NAME
    from data_prep.jigsaw import permutation_set
    from tests.support.local_s3 import local_s3_server

    with tempfile.TemporaryDirectory() as tmp, local_s3_server():
        work = Path(args.workdir or tmp)
        src, shards, shards292 = work / "crops", work / "shards", work / "shards292"
        if not src.is_dir():
            make_crops(src, args.images)
        for out, extra in ((shards, []), (shards292, ["--resize", "292"])):
            if not (out / MANIFEST_NAME).is_file():
                assert data_prep_main(["folder", "--src", str(src), "--out", str(out), "--shard-size", "250",
                                       "--name", "skimage-crops", "--no-progress", *extra]) == 0
        import fsspec

        fsspec.filesystem("s3").mkdir("bench")
        s3_shards = "s3://bench/shards"  # the same command, so the same bytes (sha256 in the manifests)
        assert data_prep_main(["folder", "--src", str(src), "--out", s3_shards, "--shard-size", "250",
                               "--name", "skimage-crops", "--no-progress"]) == 0
        perms = permutation_set(None, 100)[0]
        limit = args.batches * 10
        # warm up caches and lazy imports once, untimed
        decode_only(shards, 20, None), jigsaw_stream(shards, 2, perms), naive_pipeline(src, 2, perms)
        decode_only(s3_shards, 20, None)
        rows = {
            "(a) decode only": timed(lambda: decode_only(shards, limit, None)),
            "(a') decode + squash 292": timed(lambda: decode_only(shards, limit, 292)),
            "(b) jigsaw stream": timed(lambda: jigsaw_stream(shards, args.batches, perms)),
            "(c) naive ImageFolder+PIL": timed(lambda: naive_pipeline(src, args.batches, perms)),
            "(a'') decode, 292 shards": timed(lambda: decode_only(shards292, limit, None)),
            "(b') jigsaw stream, 292 shards": timed(lambda: jigsaw_stream(shards292, args.batches, perms)),
            # what pretraining reads (data.unique_tiles): each image's 9 tiles once, no 16x gather
            "(b'') unique tiles, 292 shards": timed(lambda: jigsaw_stream(shards292, args.batches, perms, False)),
            "(a3) decode only, local S3 server": timed(lambda: decode_only(s3_shards, limit, None)),
            "(b3) jigsaw stream, local S3 server": timed(lambda: jigsaw_stream(s3_shards, args.batches, perms)),
        }
    print(f"{args.images} skimage crops (150-500 px JPEG), {args.batches} batches of 10 images × 16 permutations; "
          f"1 process, 1 torch thread, {os.cpu_count()} cores on the machine")
    print(f"{'pipeline':34s} {'images':>7s} {'img/s/core':>11s} {'puzzles/s/core':>15s} {'img/s wall':>11s}")
    rate = {}
    for name, (n, cpu, wall) in rows.items():
        rate[name] = n / cpu
        puzzles = f"{16 * n / cpu:15.0f}" if "jigsaw" in name or "naive" in name else f"{'-':>15s}"
        print(f"{name:34s} {n:7d} {n / cpu:11.0f} {puzzles} {n / wall:11.0f}")
    b, a, c = rate["(b) jigsaw stream"], rate["(a) decode only"], rate["(c) naive ImageFolder+PIL"]
    print(f"ratio b/a (stream / decode only)  = {b / a:.2f}")
    print(f"ratio b/c (stream / naive)        = {b / c:.2f}")
    b292 = rate["(b') jigsaw stream, 292 shards"]
    print(f"ratio b'/c (292 shards / naive)   = {b292 / c:.2f}")
    tiles = rate["(b'') unique tiles, 292 shards"]
    print(f"ratio b''/c (unique tiles / naive) = {tiles / c:.2f}")
    wall = {name: n / w for name, (n, _, w) in rows.items()}
    for x, local in (("a3", "(a) decode only"), ("b3", "(b) jigsaw stream")):
        name = next(k for k in rows if k.startswith(f"({x})"))
        print(f"ratio {x}/{local[1]} (S3 / local files)     = {rate[name] / rate[local]:.2f} per core, "
              f"{wall[name] / wall[local]:.2f} wall")


if __name__ == "__main__":
    main()
