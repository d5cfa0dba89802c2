"""CIFAR-10 from the official python-version archive (``cifar-10-python.tar.gz`` or its folder).

The archive holds ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``: pickled dicts
with ``data`` [10000, 3072] uint8 (all R, then G, then B, each 32×32 row-major) and ``labels``.
Splits: ``train`` (50,000) and ``test`` (10,000); images stored as PNG so pixels round-trip exactly.

The batches are read with :class:`ArrayUnpickler`, never plain pickle: a pickle can name any
callable, so a crafted archive could otherwise run code while it is being read.
"""
from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from data_prep.shard_writer import SourceItem, SplitSource

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
EXPECTED = (f"the official CIFAR-10 python version: cifar-10-python.tar.gz or a folder holding "
            f"{FOLDER}/ with data_batch_1..5, test_batch and batches.meta")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct, either NumPy


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str/bytes, numbers and NumPy arrays; refuses every other global.

    A CIFAR-10 batch needs only NumPy's array reconstructor, ``ndarray`` and ``dtype`` (module
    ``numpy.core`` when pickled by NumPy 1, ``numpy._core`` by NumPy 2) and, in protocol-2 pickles
    written by Python 3, ``_codecs.encode`` for bytes.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR-10 batch never "
                                         f"holds (only arrays, lists, numbers and strings)") from None


def _unpickle(data: bytes, member: str, src) -> dict:
    try:
        obj = ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # refused global, truncated or foreign data
        raise SystemExit(f"error: {member} in {src} is not a CIFAR-10 batch: {type(e).__name__}: {e}; "
                         f"refusing to read it (expected {EXPECTED})") from None
    if not isinstance(obj, dict):
        raise SystemExit(f"error: {member} in {src} holds a {type(obj).__name__}, not a dict; expected {EXPECTED}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_files(src: str | Path) -> dict[str, bytes]:
    """Raw bytes of the 7 files of the archive, from the tarball or an extracted folder."""
    src = Path(src)
    names = TRAIN_BATCHES + TEST_BATCHES + ["batches.meta"]
    files: dict[str, bytes] = {}
    if src.is_file():
        try:
            with tarfile.open(src) as tar:
                for member in tar.getmembers():
                    base = Path(member.name).name
                    if base in names and member.isfile():
                        files[base] = tar.extractfile(member).read()
        except tarfile.TarError as e:
            raise SystemExit(f"error: {src} is not a readable tar archive ({e}); expected {EXPECTED}") from None
    elif src.is_dir():
        folder = src / FOLDER if (src / FOLDER).is_dir() else src
        for name in names:
            if (folder / name).is_file():
                files[name] = (folder / name).read_bytes()
    else:
        raise SystemExit(f"error: {src} does not exist; expected {EXPECTED}")
    missing = [n for n in names if n not in files]
    if missing:
        raise SystemExit(f"error: {src} lacks {', '.join(missing)}; expected {EXPECTED}")
    return files


def load(src: str | Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Return ``(class_names, {split: (images uint8 [N, 32, 32, 3], labels int64 [N])})``."""
    files = read_files(src)
    class_names = [n.decode() if isinstance(n, bytes) else n for n in _unpickle(files["batches.meta"], "batches.meta", src)["label_names"]]
    splits = {}
    for split, batches in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        images, labels = [], []
        for name in batches:
            batch = _unpickle(files[name], name, src)
            if "data" not in batch or "labels" not in batch:
                raise SystemExit(f"error: {name} in {src} lacks 'data'/'labels'; expected {EXPECTED}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise SystemExit(f"error: {name} in {src} holds data of shape {data.shape}, expected [N, 3072]")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        splits[split] = (np.concatenate(images), np.concatenate(labels))
    return class_names, splits


def sources(src: str | Path) -> tuple[list[str], dict[str, SplitSource]]:
    """Class names and the per-split inputs for :func:`data_prep.shard_writer.build_dataset`."""
    class_names, splits = load(src)

    def items_of(split, images, labels):
        return lambda: (SourceItem(key=f"{split}_{i:05d}", label=int(labels[i]),
                                   origin=f"{split}[{i}]", array=images[i]) for i in range(len(images)))
    return class_names, {split: SplitSource(items_of(split, im, lb), len(im), labelled=True)
                         for split, (im, lb) in splits.items()}
