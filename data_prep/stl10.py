"""STL-10 from the official binary archive (``stl10_binary.tar.gz`` or its extracted folder).

Files ``stl10_binary/{train,test,unlabeled}_X.bin``: uint8, per image 3 channels of 96×96 each stored
column-major (so a naive reshape gives transposed pictures); ``{train,test}_y.bin``: labels 1..10;
``class_names.txt``. Splits: ``train`` (5,000), ``test`` (8,000), ``unlabeled`` (100,000), stored as
upright PNG. The 2.7 GB unlabeled file is streamed, never loaded whole.
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from data_prep.shard_writer import SourceItem, SplitSource

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
          "unlabeled": ("unlabeled_X.bin", None)}
EXPECTED = (f"the official STL-10 binary version: stl10_binary.tar.gz or a folder holding {FOLDER}/ "
            f"with train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt")


def to_upright(raw: np.ndarray) -> np.ndarray:
    """[N, 27648] uint8 in the file's layout -> [N, 96, 96, 3] upright RGB."""
    return raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)


class _Archive:
    """Uniform access to the files, from the tarball or from a folder."""

    def __init__(self, src: Path):
        self.src = src
        self.tar = None
        if src.is_file():
            try:
                self.tar = tarfile.open(src)
                self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
            except tarfile.TarError as e:
                raise SystemExit(f"error: {src} is not a readable tar archive ({e}); expected {EXPECTED}") from None
        elif src.is_dir():
            folder = src / FOLDER if (src / FOLDER).is_dir() else src
            self.members = {p.name: p for p in folder.iterdir() if p.is_file()}
        else:
            raise SystemExit(f"error: {src} does not exist; expected {EXPECTED}")

    def has(self, name: str) -> bool:
        return name in self.members

    def size(self, name: str) -> int:
        m = self.members[name]
        return m.size if self.tar is not None else m.stat().st_size

    def open(self, name: str) -> BinaryIO:
        m = self.members[name]
        if self.tar is not None:
            return tarfile.open(self.src).extractfile(m.name)  # own handle: splits read independently
        return open(m, "rb")


def _check(archive: _Archive) -> None:
    needed = [f for x, y in SPLITS.values() for f in (x, y) if f] + ["class_names.txt"]
    missing = [n for n in needed if not archive.has(n)]
    if missing:
        raise SystemExit(f"error: {archive.src} lacks {', '.join(missing)}; expected {EXPECTED}")
    for split, (xname, yname) in SPLITS.items():
        if archive.size(xname) % IMAGE_BYTES:
            raise SystemExit(f"error: {xname} in {archive.src} is {archive.size(xname)} bytes, "
                             f"not a multiple of {IMAGE_BYTES} (3×96×96); the file is truncated or not STL-10")
        if yname and archive.size(yname) != archive.size(xname) // IMAGE_BYTES:
            raise SystemExit(f"error: {yname} has {archive.size(yname)} labels but {xname} holds "
                             f"{archive.size(xname) // IMAGE_BYTES} images")


def _stream_images(archive: _Archive, name: str, chunk: int = 1000) -> Iterator[np.ndarray]:
    with archive.open(name) as f:
        while True:
            raw = f.read(chunk * IMAGE_BYTES)
            if not raw:
                return
            yield from to_upright(np.frombuffer(raw, dtype=np.uint8).reshape(-1, IMAGE_BYTES))


def sources(src: str | Path) -> tuple[list[str], dict[str, SplitSource]]:
    """Class names and the per-split inputs for :func:`data_prep.shard_writer.build_dataset`."""
    archive = _Archive(Path(src))
    _check(archive)
    with archive.open("class_names.txt") as f:
        class_names = [line.strip() for line in f.read().decode().splitlines() if line.strip()]
    splits = {}
    for split, (xname, yname) in SPLITS.items():
        total = archive.size(xname) // IMAGE_BYTES
        labels = None
        if yname:
            with archive.open(yname) as f:
                labels = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64) - 1
            if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
                raise SystemExit(f"error: {yname} holds labels outside 1..{len(class_names)}")

        def items(split=split, xname=xname, labels=labels):
            for i, image in enumerate(_stream_images(archive, xname)):
                yield SourceItem(key=f"{split}_{i:06d}", label=None if labels is None else int(labels[i]),
                                 origin=f"{xname}[{i}]", array=np.ascontiguousarray(image))
        splits[split] = SplitSource(items, total, labelled=labels is not None)
    return class_names, splits
