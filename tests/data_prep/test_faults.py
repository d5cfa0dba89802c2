"""Crafted and damaged inputs to data_prep: no code runs from an archive, bad input is one line."""
from __future__ import annotations

import io
import os
import pickle
import warnings
import tarfile

import numpy as np
import pytest

from data_prep.__main__ import main as build
from tests.data_prep.conftest import make_cifar
from tests.support.shards import folder_shards


class _Payload:
    """Unpickling this calls os.mkdir(marker): what a malicious batch would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _replace_member(archive, name, data):
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    members[f"cifar-10-batches-py/{name}"] = data
    with tarfile.open(archive, "w:gz") as tar:
        for member, blob in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_crafted_cifar_batch_runs_no_code(tmp_path, capsys):
    src, _ = make_cifar(tmp_path)
    marker = tmp_path / "code-ran"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"extra": _Payload(marker)}
    _replace_member(src, "data_batch_3", pickle.dumps(batch, protocol=2))
    with pytest.raises(SystemExit) as exc:
        build(["cifar10", "--src", str(src), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    assert not marker.exists()
    msg = str(exc.value)
    assert "data_batch_3" in msg and "posix.mkdir" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_real_cifar_layout_still_reads_with_the_restricted_unpickler(tmp_path):
    from data_prep import cifar10

    src, truth = make_cifar(tmp_path)
    names, splits = cifar10.load(src)
    assert names[0] == "airplane"
    np.testing.assert_array_equal(splits["test"][0], truth["test"][0])


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """8 PNG images in 2 classes, 4 shards of 2."""
    return folder_shards(tmp_path_factory.mktemp("faults"), 8, n_classes=2, size=40, shard_size=2)


def damaged_copy(src, dst, damage):
    """Copy a shard directory, passing every shard's bytes through ``damage(name, bytes)``."""
    dst.mkdir()
    for f in src.iterdir():
        if not f.is_file():
            continue
        data = f.read_bytes()
        (dst / f.name).write_bytes(damage(f.name, data) if f.suffix == ".tar" else data)
    return dst


def garble_images(name, data):
    """Every image member's bytes replaced by zeros (same size: the tar stays valid)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            blob = src.extractfile(m).read()
            if m.name.endswith(".png"):
                blob = bytes(len(blob))
            dst.addfile(m, io.BytesIO(blob))
    return out.getvalue()


@pytest.mark.parametrize("damage, match, loader_workers", [
    (garble_images, "samples in a row failed to decode", 0),
    (garble_images, "samples in a row failed to decode", 1),  # raised in a DataLoader worker
    (lambda name, data: data[:700], "shard reads in a row failed", 0),  # cut inside the first member
])
def test_split_with_nothing_decodable_stops_instead_of_looping(tmp_path, small_shards, damage, match, loader_workers):
    from data_prep.infomax_stream import infomax_loader
    from data_prep.shard_stream import WARN_FIRST, CorruptSampleWarning, UndecodableSplitError

    bad = damaged_copy(small_shards, tmp_path / "bad", damage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UndecodableSplitError, match=match) as info:
            list(infomax_loader(bad, batch_size=2, batches_per_epoch=3, num_workers=loader_workers))
    msg = str(info.value).strip().splitlines()[-1]
    assert "split 'train'" in msg and "train-000000.tar" in msg and f"data_prep verify {bad}" in msg
    assert sum(issubclass(w.category, CorruptSampleWarning) for w in caught) <= WARN_FIRST


def test_unwritable_output_is_one_line_before_reading_the_source(tmp_path, capsys):
    """A path under a regular file cannot be created, for root too."""
    (tmp_path / "file").write_text("x")
    assert build(["cifar10", "--src", str(tmp_path / "not-read"), "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and "is a file, not a directory" in err
