"""Any ``class_name/image`` tree (custom datasets): one split per source folder.

``--src DIR`` builds split ``train``; ``--src train=DIR1 --src val=DIR2`` builds several splits that
share one class list (the sorted union of the class folder names). Files are taken in sorted order;
hidden files are ignored; anything that does not decode is skipped and named in the manifest.
"""
from __future__ import annotations

import re
from pathlib import Path

from data_prep.shard_writer import SourceItem, SplitSource

EXPECTED = "a folder of class folders, each holding that class's images (DIR/<class_name>/<image>)"


def safe_key(text: str) -> str:
    """A WebDataset key: no dots (they start the extension), only ``[A-Za-z0-9_/-]``."""
    return re.sub(r"[^A-Za-z0-9_/-]", "_", text)


def list_class_tree(root: Path) -> dict[str, list[Path]]:
    """``{class_name: sorted image files}`` of a class-folder tree; exits with one line if malformed."""
    if not root.is_dir():
        raise SystemExit(f"error: {root} is not a directory; expected {EXPECTED}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SystemExit(f"error: {root} holds no class folders; expected {EXPECTED}")
    tree = {c.name: sorted(f for f in c.rglob("*") if f.is_file() and not f.name.startswith("."))
            for c in classes}
    if not any(tree.values()):
        raise SystemExit(f"error: the class folders in {root} hold no files; expected {EXPECTED}")
    return tree


def items_from_files(split: str, files: list[tuple[Path, int, str]]) -> SplitSource:
    """``files``: (path, label, name relative to the split root), in the order to store them."""
    keys, seen = [], set()
    for _, _, rel in files:
        key = safe_key(str(Path(rel).with_suffix("")))
        base, n = key, 1
        while key in seen:
            key, n = f"{base}_{n}", n + 1
        seen.add(key)
        keys.append(key)
    return SplitSource(
        lambda: (SourceItem(key=k, label=label, origin=str(path), path=str(path))
                 for k, (path, label, _) in zip(keys, files)),
        len(files), labelled=True)


def parse_src(values: list[str]) -> dict[str, Path]:
    """``["DIR"]`` -> ``{"train": DIR}``; ``["train=A", "val=B"]`` -> both."""
    out = {}
    for v in values:
        split, sep, path = v.partition("=")
        if not sep:
            split, path = "train", v
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise SystemExit(f"error: split name {split!r} in --src {v} must be letters, digits or _")
        if split in out:
            raise SystemExit(f"error: split {split!r} given twice in --src")
        out[split] = Path(path)
    return out


def sources(src: list[str]) -> tuple[list[str], dict[str, SplitSource]]:
    """Class names and the per-split inputs for :func:`data_prep.shard_writer.build_dataset`."""
    trees = {split: list_class_tree(root) for split, root in parse_src(src).items()}
    class_names = sorted({c for tree in trees.values() for c in tree})
    label = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split, tree in trees.items():
        root = parse_src(src)[split]
        files = [(f, label[c], str(f.relative_to(root))) for c in sorted(tree) for f in tree[c]]
        splits[split] = items_from_files(split, files)
    return class_names, splits
