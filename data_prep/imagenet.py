"""ImageNet (ILSVRC2012) and its per-class subsets, e.g. the 10% used by the jigsaw experiments.

``train`` comes from ``--train-dir`` (``<wnid>/<file>.JPEG``); ``val`` from ``--val-dir`` either laid
out per class (``<wnid>/<file>``) or flat with ``--val-labels``, which may be
- a CSV such as Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` = ``"n01751748 ..."``)
  or any ``file,label`` CSV / ``file label`` text (e.g. Caffe's ``val.txt``), where a label is a wnid
  or an integer index into the sorted wnids;
- the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line, in file order),
  which needs ``--val-meta meta.mat`` from the devkit to map IDs to wnids.

The training subset takes ``round(fraction · n)`` files of each class (or ``--per-class N``;
Kolesnikov et al.'s published list has 128) by a seeded draw, or exactly the files of
``--subset-list``. Validation takes the same share in every mode (the paper: 10% of each class of
both, 128K and 5K): with ``--fraction`` the same fraction of each class; with ``--per-class`` or a
list that names no validation file, the share training kept overall (128 a class of ImageNet's
1,281,167 is 9.99%, so 5 of each class's 50). ``--val-fraction`` / ``--val-per-class`` choose
explicitly. A split left empty is an error. The chosen files are saved as ``subset_<split>.txt`` and
the kept/available counts go into the manifest's ``source.selection``. Odd files (CMYK, grayscale,
PNG named ``.JPEG``) are converted.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

import storage
from data_prep.folder import items_from_files, list_class_tree

WNID = re.compile(r"n\d{8}")


def choose_subset(files: list[Path], class_index: int, fraction: float, per_class: int | None,
                  seed: int) -> list[Path]:
    """The seeded per-class subset, in sorted order. Deterministic for (seed, class_index)."""
    n = len(files)
    k = per_class if per_class is not None else max(1, int(round(fraction * n)))
    k = min(k, n)
    rng = np.random.default_rng([seed, class_index])
    chosen = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
    return [files[i] for i in chosen]


def read_subset_list(path: Path) -> set[str]:
    """File names (no folders, no extension) listed one per line (first field) in ``path``."""
    if not path.is_file():
        raise SystemExit(f"error: subset list {path} does not exist")
    names = set()
    for line in path.read_text().splitlines():
        field = line.strip().split()[0] if line.strip() else ""
        if field:
            names.add(Path(field).stem)
    return names


def _label_of(value: str, wnids: list[str], where: str) -> str:
    value = value.strip()
    m = WNID.match(value)
    if m:
        return m.group(0)
    if value.lstrip("-").isdigit():
        i = int(value)
        if not 0 <= i < len(wnids):
            raise SystemExit(f"error: label {i} in {where} is outside 0..{len(wnids) - 1} (sorted wnid index)")
        return wnids[i]
    raise SystemExit(f"error: cannot read the label {value!r} in {where}: expected a wnid (n01440764) or an integer")


def _devkit_id_to_wnid(meta: Path) -> dict[int, str]:
    if not meta.is_file():
        raise SystemExit(f"error: devkit meta file {meta} does not exist (ILSVRC2012_devkit_t12/data/meta.mat)")
    from scipy.io import loadmat
    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}


def read_val_labels(path: Path, val_files: list[Path], wnids: list[str], meta: Path | None) -> dict[str, str]:
    """``{file stem: wnid}`` from any of the accepted label files (see the module docstring)."""
    if not path.is_file():
        raise SystemExit(f"error: validation labels {path} do not exist")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if not lines:
        raise SystemExit(f"error: validation labels {path} are empty")
    if all(re.fullmatch(r"\s*\d+\s*", l) for l in lines):  # devkit ground truth: one ID per line
        if meta is None:
            raise SystemExit(f"error: {path} holds one class ID per line (devkit ground truth); pass "
                             f"--val-meta ILSVRC2012_devkit_t12/data/meta.mat to map IDs to wnids")
        id_to_wnid = _devkit_id_to_wnid(meta)
        stems = sorted(f.stem for f in val_files)
        if len(stems) != len(lines):
            raise SystemExit(f"error: {path} has {len(lines)} labels but {len(stems)} validation files were found")
        return {s: id_to_wnid[int(l)] for s, l in zip(stems, lines)}
    labels = {}
    if "," in lines[0]:
        rows = list(csv.reader(lines))
        header = [h.strip() for h in rows[0]]
        if "ImageId" in header and "PredictionString" in header:
            fi, li = header.index("ImageId"), header.index("PredictionString")
            rows = rows[1:]
        else:
            fi, li = 0, 1
            if not WNID.match(rows[0][1].strip()) and not rows[0][1].strip().isdigit():
                rows = rows[1:]  # a header line
        for row in rows:
            labels[Path(row[fi].strip()).stem] = _label_of(row[li].split()[0], wnids, str(path))
    else:
        for l in lines:
            parts = l.split()
            if len(parts) < 2:
                raise SystemExit(f"error: line {l!r} in {path} is not 'file label'")
            labels[Path(parts[0]).stem] = _label_of(parts[1], wnids, str(path))
    return labels


def sources(train_dir: str | Path, val_dir: str | Path | None = None, val_labels: str | Path | None = None,
            val_meta: str | Path | None = None, fraction: float = 0.1, per_class: int | None = None,
            seed: int = 0, subset_list: str | Path | None = None, out_dir: str | Path | None = None,
            val_fraction: float | None = None, val_per_class: int | None = None):
    """Class names (sorted wnids), the per-split inputs and the selection record.

    Returns ``(wnids, {split: SplitSource}, {split: {"kept", "available", "share"}})``; writes
    ``subset_<split>.txt`` to ``out_dir``. Exits with one line on an empty split.
    """
    for name, value in (("--fraction", fraction), ("--val-fraction", val_fraction)):
        if value is not None and not 0 < value <= 1:
            raise SystemExit(f"error: {name} must be in (0, 1], got {value}")
    for name, value in (("--per-class", per_class), ("--val-per-class", val_per_class)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {name} must be >= 1, got {value}")
    if val_fraction is not None and val_per_class is not None:
        raise SystemExit("error: give --val-fraction or --val-per-class, not both")
    train_tree = list_class_tree(Path(train_dir))
    wnids = sorted(train_tree)
    bad = [w for w in wnids if not WNID.fullmatch(w)]
    if bad:
        raise SystemExit(f"error: {train_dir} holds folders that are not wnids ({bad[0]}...); expected "
                         f"ILSVRC2012/train/<wnid like n01440764>/<file>.JPEG")
    label = {w: i for i, w in enumerate(wnids)}
    listed = read_subset_list(Path(subset_list)) if subset_list else None

    if listed is not None:
        train_pick = {w: [f for f in files if f.stem in listed] for w, files in train_tree.items()}
    else:
        train_pick = {w: choose_subset(files, label[w], fraction, per_class, seed) for w, files in train_tree.items()}
    trees = {"train": (Path(train_dir), train_pick, train_tree)}
    if val_dir is not None:
        val_tree = _val_tree(Path(val_dir), val_labels, val_meta, wnids, label)
        trees["val"] = (Path(val_dir), _pick_val(val_tree, train_pick, train_tree, label, listed, fraction,
                                                 per_class, seed, val_fraction, val_per_class), val_tree)

    splits, selection = {}, {}
    for split, (root, tree, available) in trees.items():
        files = [(f, label[w], f"{w}/{f.name}") for w in sorted(tree) for f in tree[w]]
        total = sum(len(v) for v in available.values())
        if not files:
            how = f"--subset-list {subset_list} names none of its files" if listed is not None and split == "train" \
                else "the selection keeps no file"
            raise SystemExit(f"error: the {split} split of the subset is empty ({how}, of {total} available); "
                             f"check the list or the --fraction/--per-class options")
        selection[split] = {"kept": len(files), "available": total, "share": len(files) / total}
        if out_dir is not None:
            storage.makedirs(out_dir)
            storage.write_text(storage.join(out_dir, f"subset_{split}.txt"),
                               "".join(f"{rel} {lab}\n" for f, lab, rel in files))
        splits[split] = items_from_files(split, [(f, lab, f"{Path(rel).parent}/{f.name}") for f, lab, rel in files])
    return wnids, splits, selection


def _val_tree(val_dir: Path, val_labels, val_meta, wnids: list[str], label: dict) -> dict[str, list[Path]]:
    """``{wnid: files}`` of the validation set, per-class folders or flat with a label file."""
    if not val_dir.is_dir():
        raise SystemExit(f"error: --val-dir {val_dir} is not a directory")
    if val_labels is None:
        val_tree = list_class_tree(val_dir)
        unknown = sorted(set(val_tree) - set(wnids))
        if unknown:
            raise SystemExit(f"error: {val_dir} has class folders not in the train set ({unknown[0]}...); "
                             f"for a flat val folder pass --val-labels")
        return {w: files for w, files in val_tree.items() if files}
    flat = sorted(f for f in val_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    if not flat:
        raise SystemExit(f"error: {val_dir} holds no files; expected the 50,000 ILSVRC2012_val_*.JPEG")
    mapping = read_val_labels(Path(val_labels), flat, wnids, Path(val_meta) if val_meta else None)
    missing = [f.name for f in flat if f.stem not in mapping]
    if missing:
        raise SystemExit(f"error: {len(missing)} validation files have no label in {val_labels} "
                         f"(first: {missing[0]})")
    val_tree = {w: [] for w in wnids}
    for f in flat:
        if mapping[f.stem] not in label:
            raise SystemExit(f"error: {val_labels} labels {f.name} as {mapping[f.stem]}, not a train class")
        val_tree[mapping[f.stem]].append(f)
    return {w: files for w, files in val_tree.items() if files}


def _pick_val(val_tree: dict[str, list[Path]], train_pick: dict, train_tree: dict, label: dict,
              listed: set[str] | None, fraction: float, per_class: int | None, seed: int,
              val_fraction: float | None, val_per_class: int | None) -> dict[str, list[Path]]:
    """The validation files: the same per-class share as training unless chosen explicitly."""
    if val_per_class is not None or val_fraction is not None:
        return {w: choose_subset(files, label[w], val_fraction or 1.0, val_per_class, seed)
                for w, files in val_tree.items()}
    if listed is not None and any(f.stem in listed for files in val_tree.values() for f in files):
        return {w: [f for f in files if f.stem in listed] for w, files in val_tree.items()}
    if listed is None and per_class is None:
        return {w: choose_subset(files, label[w], fraction, None, seed) for w, files in val_tree.items()}
    # --per-class N or a train-only list: the share training kept overall, for each class
    share = sum(map(len, train_pick.values())) / sum(map(len, train_tree.values()))
    return {w: choose_subset(files, label[w], share, None, seed) if train_pick.get(w) else []
            for w, files in val_tree.items()}
