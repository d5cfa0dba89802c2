"""Command line: ``python -m data_prep {cifar10,stl10,imagenet,folder,digits,skimage-crops,verify} ...``.

Each builder writes ``--out DIR/manifest.json`` and ``DIR/<split>-%06d.tar``; ``DIR`` may be a local
directory or an ``s3://BUCKET/PATH`` / ``gs://BUCKET/PATH`` URL. Re-running the same command resumes an
interrupted build; ``--overwrite`` rebuilds. Bad images are skipped and listed
(exit 0), or make the command fail with ``--strict`` (exit 2, after the manifest names them all).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import storage
from data_prep import shard_tar, shard_writer
from data_prep.builders import BUILDERS, build
from data_prep.verify import verify
from storage.writable import NotWritableError, check_writable_dir


def _common(p: argparse.ArgumentParser, fmt: str) -> None:
    p.add_argument("--out", required=True, help="output directory (or s3:// / gs:// URL) for manifest.json and the shards")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="inputs per shard; use at least (ranks × loader workers) shards per split so "
                        "non-resampled streams can give every worker its own shards")
    p.add_argument("--format", choices=["png", "jpg"], default=fmt,
                   help=f"image encoding in the shards (default {fmt}; png keeps pixels exact)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="encoding processes")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier build in --out and rebuild")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any input image was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cifar10", help="CIFAR-10 python version -> train (50K) / test (10K)")
    p.add_argument("--src", required=True, help="cifar-10-python.tar.gz or its extracted folder")
    _common(p, "png")

    p = sub.add_parser("stl10", help="STL-10 binary version -> train (5K) / test (8K) / unlabeled (100K)")
    p.add_argument("--src", required=True, help="stl10_binary.tar.gz or its extracted folder")
    _common(p, "png")

    p = sub.add_parser("imagenet", help="ILSVRC2012 train/val, per-class subset (e.g. 10%%)")
    p.add_argument("--train-dir", required=True, help="ILSVRC2012/train with <wnid>/ folders")
    p.add_argument("--val-dir", help="ILSVRC2012/val: per-class folders, or flat with --val-labels")
    p.add_argument("--val-labels", help="labels for a flat val folder: LOC_val_solution.csv, 'file label' "
                                        "text/CSV, or the devkit ground truth (needs --val-meta)")
    p.add_argument("--val-meta", help="devkit meta.mat, to read ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--fraction", type=float, default=0.1, help="share of each class to keep (default 0.1)")
    p.add_argument("--per-class", type=int, help="keep exactly N files a class instead of --fraction")
    p.add_argument("--subset-list", help="keep exactly the files named in this list (e.g. a published one); "
                                          "validation keeps the listed val files, or else training's share")
    p.add_argument("--val-fraction", type=float,
                   help="share of each validation class to keep (default: the same share as training)")
    p.add_argument("--val-per-class", type=int, help="keep exactly N validation files a class")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class draw")
    p.add_argument("--resize", type=int, help="store images squashed to N×N (292 is the jigsaw stream's "
                                              "first step, which it then skips; smaller shards to decode)")
    _common(p, "jpg")

    p = sub.add_parser("folder", help="any class_name/image tree")
    p.add_argument("--src", required=True, action="append",
                   help="DIR (split 'train') or SPLIT=DIR; repeat for several splits")
    p.add_argument("--resize", type=int, help="store images squashed to N×N")
    p.add_argument("--name", default="folder", help="dataset name recorded in the manifest")
    _common(p, "jpg")

    p = sub.add_parser("digits", help="scikit-learn's real 8x8 digit scans, scaled up (offline demo data)")
    p.add_argument("--size", type=int, default=32, help="side of the stored RGB images (default 32)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="stratified share of each class for test")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    _common(p, "png")

    p = sub.add_parser("skimage-crops", help="random crops of scikit-image's sample photos (offline demo data)")
    p.add_argument("--images", type=int, default=1000, help="number of crops")
    p.add_argument("--test-fraction", type=float, default=0.2, help="stratified share of each photo for test")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and the split")
    p.add_argument("--resize", type=int, help="store images squashed to N×N")
    _common(p, "jpg")

    p = sub.add_parser("verify", help="check every shard against manifest.json")
    p.add_argument("dir", help="shard directory or s3:// / gs:// URL")
    p.add_argument("--no-decode", action="store_true", help="skip decoding the images (faster)")
    p.add_argument("--max-member-mb", type=float, default=shard_tar.MAX_MEMBER_MB,
                   help="refuse a shard member above this size, unread (default %(default)s: an image sample "
                        "is far smaller; a larger one is damage or a decompression bomb)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = getattr(args, "out", None)
    made = _missing_dirs(out) if out is not None and not storage.is_url(out) else []
    try:
        return _run(args)
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:  # a build that stopped before writing anything (a missing archive, say) leaves no --out behind
        for d in made:
            with contextlib.suppress(OSError):  # not empty: the build wrote there
                os.rmdir(d)


def _missing_dirs(path: str) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing, p = [], Path(path).expanduser().absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    return missing


def _run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        if storage.is_url(args.dir):  # a bad scheme, a missing bucket, no credentials
            storage.check_bucket(args.dir)
        problems = verify(args.dir, decode=not args.no_decode, progress=sys.stderr.isatty(),
                          max_member_mb=args.max_member_mb)
        for line in problems:
            print(f"verify: {line}", file=sys.stderr)
        if problems:
            print(f"verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
            return 1
        print(f"verify: {args.dir} matches its manifest")
        return 0

    try:  # before any expensive work; a URL: its bucket and credentials
        check_writable_dir(args.out, "--out", "choose another output directory")
    except NotWritableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts = shard_writer.EncodeOptions(fmt=args.format, quality=args.quality, resize=getattr(args, "resize", None))
    inputs = {name: getattr(args, name) for name in BUILDERS[args.command].inputs}
    manifest = build(args.command, args.out, inputs, opts, shard_size=args.shard_size, workers=args.workers,
                     overwrite=args.overwrite, progress=not args.no_progress)
    print(shard_writer.summary(manifest))
    skipped = sum(len(s["skipped"]) for s in manifest["splits"].values())
    if skipped and args.strict:
        print(f"error: {skipped} input image(s) skipped (listed above and in {args.out}/manifest.json); "
              f"--strict makes this fatal", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
