"""Shard directories that are data, not instructions: manifests whose names would leave their folder
or whose fields are malformed, and shards that are decompression bombs or declare huge members."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from data_prep.__main__ import main as data_prep_main
from data_prep.manifest import ManifestError, read_manifest
from tests.support.shards import folder_shards

REPO = Path(__file__).resolve().parents[2]
BOMB_BYTES = 1 << 29  # what the gzip shard expands to: 512 MiB of zeros, from about 0.5 MB on disk


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """12 PNG images in 2 classes, 3 shards of 4."""
    return folder_shards(tmp_path_factory.mktemp("security"), 12, n_classes=2, size=32, shard_size=4)


def copy_with(src: Path, dst: Path, manifest_bytes: bytes | None = None, shards: dict | None = None) -> Path:
    """A copy of a shard directory with its manifest and some shards' bytes replaced."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    if manifest_bytes is not None:
        (dst / "manifest.json").write_bytes(manifest_bytes)
    for name, data in (shards or {}).items():
        (dst / name).write_bytes(data)
    return dst


def edited(src: Path, edit) -> bytes:
    m = json.loads((src / "manifest.json").read_text())
    edit(m)
    return json.dumps(m).encode()


def _set(path: str, value):
    def edit(m):
        *keys, last = path
        node = m
        for k in keys:
            node = node[k]
        node[last] = value
    return edit


MANIFESTS = {
    "dataset ../../x": (_set(["dataset"], "../../x"), "dataset is '../../x'"),
    "absolute dataset": (_set(["dataset"], "/tmp/elsewhere"), "dataset is '/tmp/elsewhere'"),
    "backslash dataset": (_set(["dataset"], "..\\x"), "dataset is"),
    "NUL in dataset": (_set(["dataset"], "a\x00b"), "dataset is"),
    "dataset ..": (_set(["dataset"], ".."), "dataset is '..'"),
    "shard outside": (_set(["splits", "train", "shards", 0, "name"], "/etc/passwd"),
                      "splits.train.shards[0].name is '/etc/passwd'"),
    "shard ../": (_set(["splits", "train", "shards", 0, "name"], "../../etc/passwd"), "shards[0].name is '../../etc/passwd'"),
    "split name": (lambda m: m["splits"].update({"../t": m["splits"]["train"]}), "split name '../t'"),
    "num_samples abc": (_set(["splits", "train", "num_samples"], "abc"), "splits.train.num_samples is 'abc', not a count"),
    "no shards": (lambda m: m["splits"]["train"].pop("shards"), "splits.train.shards is missing"),
    "class names": (_set(["class_names"], "c0"), "class_names is not a list of strings"),
}


@pytest.mark.parametrize("name", list(MANIFESTS) + ["non-UTF-8", "a list"])
def test_every_reader_refuses_a_bad_manifest_in_one_line_naming_the_field(shards, tmp_path, capsys, name):
    """read_manifest (training, evaluation), ``data_prep verify`` and pretrain's checks before Ray."""
    if name == "non-UTF-8":
        bad, match = b'{"format": 1, "dataset": "\xff\xfe"}', "is not UTF-8 text"
    elif name == "a list":
        bad, match = b"[1, 2]", "the top level is a list"
    else:
        edit, match = MANIFESTS[name]
        bad = edited(shards, edit)
    folder = copy_with(shards, tmp_path / "bad", manifest_bytes=bad)

    with pytest.raises(ManifestError) as info:
        read_manifest(folder)
    assert match in str(info.value) and "\n" not in str(info.value)

    assert data_prep_main(["verify", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[0] and len(err) == 2, err  # the line, then the count; /etc/passwd never hashed

    from pretrain.__main__ import main as pretrain_main

    assert pretrain_main(["--config", str(REPO / "configs" / "demo_infomax_eta.yaml"), f"data.shards={folder}",
                          f"run.root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err and err.startswith("config error: data.shards:"), err
    assert not (tmp_path / "runs").exists()


def gzip_bomb() -> bytes:
    """A gzip-compressed tar whose one member is BOMB_BYTES of zeros, about 1 MB on disk. Built in an
    instant: after a full flush deflate starts afresh, so every 1 MiB block of zeros compresses to the
    same bytes; the block is compressed once and repeated, then the stream is ended by hand (an empty
    final block, then the CRC-32 and length of what it expands to)."""
    header = tarfile.TarInfo("bomb_0000.png")
    header.size = BOMB_BYTES
    head = header.tobuf(format=tarfile.USTAR_FORMAT)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(1 << 20)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    n = BOMB_BYTES // len(zeros) + 1  # the member, then its end-of-archive blocks (zeros too)
    crc = zlib.crc32(head)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    return start + block * n + b"\x03\x00" + struct.pack("<II", crc, (len(head) + n * len(zeros)) & 0xFFFFFFFF)


def huge_header() -> bytes:
    """A plain tar whose member declares 8 GiB and holds 1 kB (read whole, it would fail or take 8 GiB)."""
    header = tarfile.TarInfo("huge_0000.png")
    header.size = 8 << 30
    return header.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)


def large_member() -> bytes:
    """A plain tar with one real 3 MiB member: above a limit of 1 MB, below the default."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("big_0000.png")
        info.size = 3 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return out.getvalue()


READ_ALL_THREE = r"""
import json, resource, sys, warnings
from data_prep.eval_stream import ShardIndexDataset
from data_prep.infomax_stream import infomax_loader
from data_prep.verify import verify

peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux counts kB)
before = peak()
folder = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    batches = list(infomax_loader(folder, batch_size=2, batches_per_epoch=3, resampled=False, shuffle_buffer=1))
    evaluated = ShardIndexDataset(folder, "train", "infomax")
print(json.dumps({"batches": len(batches), "train": [str(w.message) for w in caught if "shard" in str(w.message)],
                  "verify": verify(folder, decode=False), "eval": evaluated.damaged_shards,
                  "eval_samples": len(evaluated), "peak_growth": peak() - before}))
"""


def test_bomb_shards_are_refused_unread_by_training_verify_and_eval(shards, tmp_path):
    """One process runs the training stream, ``verify`` and the evaluation index over a copy whose
    second shard is a gzip bomb and third declares an 8 GiB member: each reader names shard (and
    member), goes on with the good shard, and the process never holds the bombs' bytes (its peak
    memory grows by far less than them)."""
    folder = copy_with(shards, tmp_path / "bomb", shards={"train-000001.tar": gzip_bomb(),
                                                          "train-000002.tar": huge_header()})
    proc = subprocess.run([sys.executable, "-c", READ_ALL_THREE, str(folder)], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["batches"] == 3  # from the good shard, started over (resampled=False repeats its slot)
    for match in ("train-000001.tar is gzip-compressed; shards are plain tar",
                  "train-000002.tar: member huge_0000.png declares 8589934592 bytes, above the 64 MB"):
        assert any(match in w for w in out["train"]), out["train"]
        assert any(match in p for p in out["verify"]), out["verify"]
        assert any(match in d["problem"] for d in out["eval"]), out["eval"]
    assert len(out["eval"]) == 2 and out["eval_samples"] == 4
    assert out["peak_growth"] < BOMB_BYTES / 8, out["peak_growth"]


def test_verify_limit_is_a_setting(shards, tmp_path, capsys):
    """A real 3 MiB member passes the default limit (as a sample without an image) and is refused,
    named, under ``--max-member-mb 1``."""
    folder = copy_with(shards, tmp_path / "big", shards={"train-000001.tar": large_member()})
    assert data_prep_main(["verify", str(folder), "--no-decode"]) == 1
    assert "above the" not in capsys.readouterr().err
    assert data_prep_main(["verify", str(folder), "--no-decode", "--max-member-mb", "1"]) == 1
    err = capsys.readouterr().err
    assert "train-000001.tar: member big_0000.png declares 3145728 bytes, above the 1 MB" in err, err
