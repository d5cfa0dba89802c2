"""Tiny archives in exactly the official layouts, and tiny folder-built shards, written from scratch by the tests."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_row(image: np.ndarray) -> np.ndarray:
    """Official CIFAR-10 row: 1024 R values, then G, then B, each plane row-major."""
    return np.concatenate([image[:, :, c].ravel() for c in range(3)])


def make_cifar(root: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0) -> tuple[Path, dict]:
    """cifar-10-python.tar.gz with 5 train batches and a test batch; returns (path, truth)."""
    rng = np.random.default_rng(seed)
    truth = {"train": ([], []), "test": ([], [])}
    files = {}
    for name, split, n in [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [("test_batch", "test", n_test)]:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        truth[split][0].extend(images)
        truth[split][1].extend(labels)
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": np.stack([cifar_row(im) for im in images]),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        files[name] = pickle.dumps(batch, protocol=2)
    files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES],
                                          b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=2)
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, {s: (np.stack(im), np.array(lb)) for s, (im, lb) in truth.items()}


def stl_pattern(n: int, seed: int) -> np.ndarray:
    """Upright images whose orientation is unmistakable: a bright top-left corner, random rest."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 100, size=(n, 96, 96, 3), dtype=np.uint8)
    images[:, :10, :30, 0] = 255  # a wide red bar at the top left
    return images


def make_stl(root: Path, counts=(4, 3, 5)) -> tuple[Path, dict]:
    """stl10_binary/ folder with the official column-major files; returns (folder, truth)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    truth = {}
    for i, (split, n) in enumerate(zip(["train", "test", "unlabeled"], counts)):
        images = stl_pattern(n, seed=i)
        raw = b"".join(images[j, :, :, c].flatten(order="F").tobytes() for j in range(n) for c in range(3))
        (folder / f"{split}_X.bin").write_bytes(raw)
        labels = None
        if split != "unlabeled":
            labels = (np.arange(n) % 10).astype(np.int64)
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        truth[split] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return folder, truth


def jpeg_bytes(array: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    img = Image.fromarray(array)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


WNIDS = ["n01440764", "n01443537", "n01484850"]


def make_imagenet(root: Path, per_class: int = 20, val_per_class: int = 10) -> dict:
    """ILSVRC-style train/<wnid>/ and flat val/ with LOC_val_solution.csv, plus odd files."""
    rng = np.random.default_rng(1)
    train = root / "train"
    for c, wnid in enumerate(WNIDS):
        (train / wnid).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, size=2)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            (train / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(arr))
    odd = train / WNIDS[0]
    arr = rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    (odd / f"{WNIDS[0]}_cmyk.JPEG").write_bytes(jpeg_bytes(arr, "CMYK"))
    (odd / f"{WNIDS[0]}_gray.JPEG").write_bytes(jpeg_bytes(arr, "L"))
    (odd / f"{WNIDS[0]}_png.JPEG").write_bytes(jpeg_bytes(arr, fmt="PNG"))
    bad = train / WNIDS[1]
    (bad / f"{WNIDS[1]}_empty.JPEG").write_bytes(b"")
    (bad / f"{WNIDS[1]}_trunc.JPEG").write_bytes(jpeg_bytes(arr)[:300])
    (bad / f"{WNIDS[1]}_garbage.JPEG").write_bytes(b"this is not an image at all" * 10)
    val = root / "val"
    val.mkdir()
    rows = ["ImageId,PredictionString"]
    k = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(val_per_class):
            k += 1
            name = f"ILSVRC2012_val_{k:08d}"
            arr = rng.integers(0, 256, size=(45, 55, 3), dtype=np.uint8)
            (val / f"{name}.JPEG").write_bytes(jpeg_bytes(arr))
            rows.append(f"{name},{wnid} 1 2 30 40 {wnid} 3 4 20 20")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return {"train": train, "val": val, "labels": root / "LOC_val_solution.csv"}


def read_shards(shard_dir: Path, split: str) -> dict:
    """{key: (uint8 image, label or None)} read with tarfile + PIL, independent of the package."""
    out = {}
    for tar_path in sorted(Path(shard_dir).glob(f"{split}-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {}
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, files in members.items():
            img_ext = "png" if "png" in files else "jpg"
            image = np.asarray(Image.open(io.BytesIO(files[img_ext])).convert("RGB"))
            label = int(files["cls"]) if "cls" in files else None
            out[key] = (image, label)
    return out


@pytest.fixture
def cifar_archive(tmp_path):
    return make_cifar(tmp_path)


@pytest.fixture
def stl_archive(tmp_path):
    return make_stl(tmp_path)


@pytest.fixture
def imagenet_tree(tmp_path):
    return make_imagenet(tmp_path / "ILSVRC2012")
