"""Round-trips of the builders on tiny archives in the official formats."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from data_prep import shard_writer
from data_prep.__main__ import main
from data_prep.manifest import ManifestError, read_manifest, shard_paths
from data_prep.verify import verify

from .conftest import CIFAR_CLASSES, WNIDS, read_shards


def build(*args):
    return main(list(args) + ["--workers", "1", "--no-progress"])


def test_cifar10_round_trip_exact(tmp_path, cifar_archive):
    src, truth = cifar_archive
    out = tmp_path / "c10"
    assert build("cifar10", "--src", str(src), "--out", str(out), "--shard-size", "7") == 0
    m = read_manifest(out)
    assert m["class_names"] == CIFAR_CLASSES
    assert m["splits"]["train"]["num_samples"] == 30 and m["splits"]["test"]["num_samples"] == 8
    assert [s["num_samples"] for s in m["splits"]["train"]["shards"]] == [7, 7, 7, 7, 2]
    for split in ("train", "test"):
        got = read_shards(out, split)
        images, labels = truth[split]
        assert len(got) == len(images)
        for i in range(len(images)):
            image, label = got[f"{split}_{i:05d}"]
            np.testing.assert_array_equal(image, images[i])  # PNG: exact pixels
            assert label == labels[i]
        assert m["splits"][split]["class_counts"] == np.bincount(labels, minlength=10).tolist()
    assert verify(out) == []


def test_cifar10_extracted_folder_gives_identical_shards(tmp_path, cifar_archive):
    src, _ = cifar_archive
    with tarfile.open(src) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    build("cifar10", "--src", str(src), "--out", str(tmp_path / "a"))
    build("cifar10", "--src", str(tmp_path / "x"), "--out", str(tmp_path / "b"))
    sha = lambda d: [s["sha256"] for s in read_manifest(d)["splits"]["train"]["shards"]]
    assert sha(tmp_path / "a") == sha(tmp_path / "b")


def test_stl10_upright_and_unlabeled(tmp_path, stl_archive):
    folder, truth = stl_archive
    out = tmp_path / "s10"
    assert build("stl10", "--src", str(folder.parent), "--out", str(out)) == 0
    m = read_manifest(out)
    assert {k: v["num_samples"] for k, v in m["splits"].items()} == {"train": 4, "test": 3, "unlabeled": 5}
    assert m["splits"]["unlabeled"]["labelled"] is False
    for split, (images, labels) in truth.items():
        got = read_shards(out, split)
        for i in range(len(images)):
            image, label = got[f"{split}_{i:06d}"]
            np.testing.assert_array_equal(image, images[i])
            assert image[:10, :30, 0].min() == 255 and image[30:, :, 0].max() < 100  # red bar top-left
            assert label == (None if labels is None else labels[i])
    # the tarball gives the same result
    tgz = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="stl10_binary")
    build("stl10", "--src", str(tgz), "--out", str(tmp_path / "s10b"))
    assert read_manifest(tmp_path / "s10b")["splits"] == m["splits"]
    assert verify(out) == []


def test_missing_or_wrong_source_fails_with_one_line(tmp_path, stl_archive):
    with pytest.raises(SystemExit, match="does not exist; expected the official CIFAR-10"):
        build("cifar10", "--src", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o" / "cifar10"))
    assert not (tmp_path / "o").exists()  # no empty --out (nor its parents) left behind
    folder, _ = stl_archive
    (folder / "test_y.bin").unlink()
    with pytest.raises(SystemExit, match="lacks test_y.bin"):
        build("stl10", "--src", str(folder), "--out", str(tmp_path / "o"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(SystemExit, match="holds no class folders"):
        build("folder", "--src", str(tmp_path / "flat"), "--out", str(tmp_path / "o"))
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path / "o")


def test_imagenet_odd_files_converted_bad_ones_skipped(tmp_path, imagenet_tree, capsys):
    out = tmp_path / "in"
    args = ["imagenet", "--train-dir", str(imagenet_tree["train"]), "--val-dir", str(imagenet_tree["val"]),
            "--val-labels", str(imagenet_tree["labels"]), "--fraction", "1", "--out", str(out)]
    assert build(*args) == 0
    m = read_manifest(out)
    assert m["class_names"] == WNIDS
    train = read_shards(out, "train")
    assert len(train) == 60 + 3  # 20 a class + CMYK, gray, PNG-named-JPEG
    for odd in ("cmyk", "gray", "png"):
        image, label = train[f"{WNIDS[0]}/{WNIDS[0]}_{odd}"]
        assert image.shape == (50, 60, 3) and label == 0
    skipped = {s["input"].rsplit("/", 1)[-1]: s["reason"] for s in m["splits"]["train"]["skipped"]}
    assert set(skipped) == {f"{WNIDS[1]}_{x}.JPEG" for x in ("empty", "trunc", "garbage")}
    assert skipped[f"{WNIDS[1]}_empty.JPEG"] == "empty file"
    assert "3 skipped" in capsys.readouterr().out
    val = read_shards(out, "val")
    assert len(val) == 30
    for key, (_, label) in val.items():
        number = int(key.rsplit("_", 1)[1])
        assert label == (number - 1) // 10  # rows of the CSV: 10 a class, in order
    assert m["splits"]["val"]["class_counts"] == [10, 10, 10]
    assert build(*args, "--strict", "--overwrite") == 2
    assert verify(out) == []


def test_imagenet_per_class_subset_is_deterministic(tmp_path, imagenet_tree):
    base = ["imagenet", "--train-dir", str(imagenet_tree["train"]), "--val-dir", str(imagenet_tree["val"]),
            "--val-labels", str(imagenet_tree["labels"]), "--fraction", "0.1"]
    lists = {}
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        assert build(*base, "--seed", seed, "--out", str(tmp_path / name), "--shard-size", "4") == 0
        lists[name] = (tmp_path / name / "subset_train.txt").read_text()
    assert lists["a"] == lists["b"] and lists["a"] != lists["c"]
    m = read_manifest(tmp_path / "a")
    per_class = np.bincount([int(l.split()[1]) for l in lists["a"].splitlines()], minlength=3)
    assert per_class.tolist() == [2, 2, 2]  # round(0.1 × 23) each
    assert m["splits"]["val"]["class_counts"] == [1, 1, 1]
    # an explicit list (e.g. the published one) is followed exactly
    chosen = tmp_path / "list.txt"
    chosen.write_text(f"{WNIDS[2]}/{WNIDS[2]}_5.JPEG\n{WNIDS[0]}/{WNIDS[0]}_cmyk.JPEG\n")
    assert build("imagenet", "--train-dir", str(imagenet_tree["train"]), "--subset-list", str(chosen),
                 "--out", str(tmp_path / "d")) == 0
    assert sorted(read_shards(tmp_path / "d", "train")) == [f"{WNIDS[0]}/{WNIDS[0]}_cmyk", f"{WNIDS[2]}/{WNIDS[2]}_5"]


def test_val_label_forms_agree(tmp_path, imagenet_tree):
    """Kaggle CSV, Caffe-style 'file index' text and a per-class folder layout give the same labels."""
    val = imagenet_tree["val"]
    rows = imagenet_tree["labels"].read_text().splitlines()[1:]
    caffe = tmp_path / "val.txt"
    caffe.write_text("".join(f"{r.split(',')[0]}.JPEG {WNIDS.index(r.split(',')[1].split()[0])}\n" for r in rows))
    per_class = tmp_path / "val_per_class"
    for r in rows:
        name, wnid = r.split(",")[0], r.split(",")[1].split()[0]
        (per_class / wnid).mkdir(parents=True, exist_ok=True)
        (per_class / wnid / f"{name}.JPEG").write_bytes((val / f"{name}.JPEG").read_bytes())
    results = []
    for extra in (["--val-dir", str(val), "--val-labels", str(imagenet_tree["labels"])],
                  ["--val-dir", str(val), "--val-labels", str(caffe)], ["--val-dir", str(per_class)]):
        out = tmp_path / f"o{len(results)}"
        build("imagenet", "--train-dir", str(imagenet_tree["train"]), "--fraction", "0.1", *extra, "--out", str(out))
        results.append(sorted((k.rsplit("/", 1)[-1], lab) for k, (_, lab) in read_shards(out, "val").items()))
    assert results[0] == results[1] == results[2]
    with pytest.raises(SystemExit, match="pass --val-meta"):
        gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
        gt.write_text("1\n" * 30)
        build("imagenet", "--train-dir", str(imagenet_tree["train"]), "--val-dir", str(val),
              "--val-labels", str(gt), "--out", str(tmp_path / "o9"))


def test_rerun_after_interrupted_build(tmp_path, cifar_archive, monkeypatch):
    src, _ = cifar_archive
    clean, out = tmp_path / "clean", tmp_path / "broken"
    build("cifar10", "--src", str(src), "--out", str(clean), "--shard-size", "4")
    real = shard_writer._write_shard
    calls = {"n": 0}

    def dies_on_third(path, encoded, ext, num_classes):
        calls["n"] += 1
        if calls["n"] == 3:  # die half way through writing a shard
            with open(f"{path}.tmp", "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        return real(path, encoded, ext, num_classes)
    monkeypatch.setattr(shard_writer, "_write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build("cifar10", "--src", str(src), "--out", str(out), "--shard-size", "4")
    monkeypatch.setattr(shard_writer, "_write_shard", real)
    assert not (out / "manifest.json").exists() and len(list(out.glob("train-*.tar"))) == 2
    # also damage a finished shard: the re-run must notice (sha256) and rewrite it
    (out / "train-000001.tar").write_bytes(b"damaged")
    calls["n"] = 0
    monkeypatch.setattr(shard_writer, "_write_shard", lambda *a: (calls.__setitem__("n", calls["n"] + 1), real(*a))[1])
    assert build("cifar10", "--src", str(src), "--out", str(out), "--shard-size", "4") == 0
    assert calls["n"] == 10 - 1  # 8 train + 2 test shards, the intact first one reused
    assert read_manifest(out)["splits"] == read_manifest(clean)["splits"]
    assert not list(out.glob("*.tmp"))
    assert verify(out) == []
    with pytest.raises(SystemExit, match="other settings; pass --overwrite"):
        build("cifar10", "--src", str(src), "--out", str(out), "--shard-size", "5")


def test_verify_catches_tampering(tmp_path, cifar_archive, capsys):
    src, _ = cifar_archive
    out = tmp_path / "c10"
    build("cifar10", "--src", str(src), "--out", str(out), "--shard-size", "10")
    assert main(["verify", str(out)]) == 0
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1200] ^= 0xFF  # flip a byte inside the first PNG
    shard.write_bytes(bytes(data))
    problems = verify(out)
    assert any("train-000001.tar sha256 differs" in p for p in problems)
    assert main(["verify", str(out)]) == 1
    assert "problem(s)" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    m["splits"]["test"]["shards"][0]["num_samples"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    assert any("holds 8 samples, manifest says 9" in p for p in verify(out))
    (out / "test-000000.tar").unlink()
    with pytest.raises(ManifestError, match="missing"):
        shard_paths(out, "test")


def test_folder_builder_several_splits(tmp_path, imagenet_tree):
    src = tmp_path / "custom"
    for split, classes in {"tr": ["cat", "dog"], "va": ["dog", "emu"]}.items():
        for c in classes:
            (src / split / c).mkdir(parents=True)
            for i in range(3):
                (src / split / c / f"im.{i}.jpg").write_bytes(
                    (imagenet_tree["train"] / WNIDS[0] / f"{WNIDS[0]}_{i}.JPEG").read_bytes())
    out = tmp_path / "f"
    assert build("folder", "--src", f"train={src / 'tr'}", "--src", f"val={src / 'va'}", "--out", str(out),
                 "--resize", "32") == 0
    m = read_manifest(out)
    assert m["class_names"] == ["cat", "dog", "emu"]
    val = read_shards(out, "val")
    assert sorted(val) == [f"{c}/im_{i}" for c in ("dog", "emu") for i in range(3)]
    assert {lab for _, lab in val.values()} == {1, 2}
    assert all(im.shape == (32, 32, 3) for im, _ in val.values())


def test_parallel_encoding_gives_identical_shards(tmp_path, cifar_archive):
    src, _ = cifar_archive
    for workers in ("1", "2"):
        assert main(["cifar10", "--src", str(src), "--out", str(tmp_path / workers), "--workers", workers,
                     "--shard-size", "8", "--no-progress"]) == 0
    assert read_manifest(tmp_path / "1")["splits"] == read_manifest(tmp_path / "2")["splits"]


def test_every_sub_command_but_verify_is_a_builder_that_reads_its_own_options():
    import argparse
    import inspect

    from data_prep.__main__ import parser
    from data_prep.builders import BUILDERS

    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) - {"verify"} == set(BUILDERS)
    for name, builder in BUILDERS.items():
        assert set(builder.inputs) <= {a.dest for a in commands[name]._actions}, name
        assert tuple(inspect.signature(builder.read).parameters) == builder.inputs, name
