"""ImageNet-10%: validation keeps the same per-class share as training in every selection mode."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.__main__ import main
from data_prep.manifest import read_manifest
from eval.paper_results import is_imagenet10

from .conftest import WNIDS


def build(tree, out, *options):
    args = ["imagenet", "--train-dir", str(tree["train"]), "--val-dir", str(tree["val"]),
            "--val-labels", str(tree["labels"]), *options, "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    return read_manifest(out)


def per_class(out, split):
    lines = (out / f"subset_{split}.txt").read_text().splitlines()
    return np.bincount([int(l.split()[1]) for l in lines], minlength=len(WNIDS)).tolist()


# The fake tree: 23 training files a class in the first two classes (20 + 3 odd or broken files),
# 20 in the third (69 in all), and 10 validation images a class.
@pytest.mark.parametrize("mode, options, train, val", [
    ("fraction", ["--fraction", "0.1"], [2, 2, 2], [1, 1, 1]),  # round(0.1 × n) of each class, both splits
    # 5 a class keeps 15 of 69 (21.7%) of training: validation keeps round(0.217 × 10) = 2 of each class
    ("per-class", ["--per-class", "5"], [5, 5, 5], [2, 2, 2]),
    ("explicit", ["--per-class", "5", "--val-per-class", "3"], [5, 5, 5], [3, 3, 3]),
])
def test_validation_takes_the_training_share(tmp_path, imagenet_tree, mode, options, train, val):
    out = tmp_path / mode
    m = build(imagenet_tree, out, *options)
    assert per_class(out, "train") == train and per_class(out, "val") == val
    assert m["splits"]["val"]["class_counts"] == val
    sel = m["source"]["selection"]
    assert sel["train"]["kept"] == sum(train) and sel["val"] == {"kept": sum(val), "available": 30, "share": sum(val) / 30}


def test_train_only_list_gives_validation_the_same_share(tmp_path, imagenet_tree):
    # 12 of 69 training files listed (a published list names training files only): 17.4% kept, so
    # round(0.174 × 10) = 2 validation images of each class that has listed training files
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{w}/{w}_{i}.JPEG\n" for w in (WNIDS[0], WNIDS[2]) for i in range(6)))
    out = tmp_path / "listed"
    m = build(imagenet_tree, out, "--subset-list", str(listed))
    assert per_class(out, "train") == [6, 0, 6]
    assert per_class(out, "val") == [2, 0, 2]
    assert m["source"]["selection"]["val"]["kept"] == 4
    # a list that also names validation files is followed for both splits
    listed.write_text(listed.read_text() + "ILSVRC2012_val_00000001.JPEG\nILSVRC2012_val_00000030.JPEG\n")
    out = tmp_path / "listed_both"
    build(imagenet_tree, out, "--subset-list", str(listed))
    assert per_class(out, "val") == [1, 0, 1]


def test_empty_split_is_refused(tmp_path, imagenet_tree):
    listed = tmp_path / "list.txt"
    listed.write_text("n09999999_1.JPEG\n")  # names no file of the tree
    with pytest.raises(SystemExit, match="train split of the subset is empty"):
        build(imagenet_tree, tmp_path / "empty", "--subset-list", str(listed))
    assert not (tmp_path / "empty" / "manifest.json").exists()


def test_table3_label_only_for_ten_percent_of_both_splits():
    def sel(train, val):
        return {"selection": {"train": {"share": train}, "val": {"share": val}}}

    assert is_imagenet10("imagenet", sel(128_000 / 1_281_167, 5_000 / 50_000))  # the published list + 5 a class
    assert not is_imagenet10("imagenet", sel(128_000 / 1_281_167, 1.0))  # --per-class 128 that kept all of val
    assert not is_imagenet10("imagenet", sel(0.5, 0.1))
    assert not is_imagenet10("cifar10", sel(0.1, 0.1))
    # builds from before the selection was recorded: only --fraction 0.1 subsetted validation
    assert is_imagenet10("imagenet", {"fraction": 0.1, "per_class": None, "subset_list": None})
    assert not is_imagenet10("imagenet", {"fraction": 0.1, "per_class": 128, "subset_list": None})
    assert not is_imagenet10("imagenet", {"fraction": 0.1, "per_class": None, "subset_list": "list.txt"})
