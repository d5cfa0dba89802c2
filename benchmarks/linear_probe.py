"""Linear probe on cached features vs. the usual probe that forwards every image every epoch.

Both train the same linear layer (same seed, same batches in the same order, Adam lr 1e-4) on the
same frozen encoder; the cached probe pays one forward pass over train and test, the usual one pays
one per epoch. Prints both times, the ratio, and both sets of accuracies (they agree exactly,
because the evaluation crops are deterministic).

    nice -n 10 python benchmarks/linear_probe.py --epochs 20                 # DCGAN on digits, 32×32
    nice -n 10 python benchmarks/linear_probe.py --kind jigsaw --epochs 3 --limit 200   # ResNet50, 9 patches

Without --checkpoint/--data it builds scikit-learn's 8×8 handwritten digits (1,797 real images,
upscaled, stratified 80/20 split: data_prep's `digits` source) as shards under --work and writes a checkpoint of a randomly
initialised encoder (DCGAN depth 2, or ResNet50 for --kind jigsaw): the cost being measured does not
depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from data_prep.eval_stream import eval_loader
from data_prep.manifest import MANIFEST_NAME, read_manifest
from eval.features import encode_batch, extract_features
from eval.linear import KS, default_splits
from eval.probe import make_probe, probe_scores, probe_step, train_linear_probe
from eval.topk import topk_accuracy
from pretrain.checkpoint import capture_rng, load_encoder, save_checkpoint
from pretrain.run_dir import checkpoint_dir_name
from pretrain.models import build_encoder



def build_digits_shards(out: Path, size: int, limit: int | None) -> Path:
    """scikit-learn's digits through data_prep's `digits` source (as `python -m data_prep digits`),
    optionally only the first `limit` train and `limit // 4` test images."""
    import itertools

    from data_prep.sample_images import digits_sources
    from data_prep.shard_writer import EncodeOptions, SplitSource, build_dataset

    if (out / MANIFEST_NAME).is_file():
        return out
    class_names, splits = digits_sources(size, 0.2, 0)
    if limit:
        keep = {"train": limit, "test": max(1, limit // 4)}
        splits = {s: SplitSource((lambda src=src, n=keep[s]: itertools.islice(src.items(), n)), min(keep[s], src.total), True)
                  for s, src in splits.items()}
    build_dataset(out, "sklearn-digits", {"src": "sklearn.datasets.load_digits", "size": size, "limit": limit},
                  class_names, splits, EncodeOptions(fmt="png"), shard_size=500, progress=False)
    return out


class _Task(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


def random_checkpoint(out: Path, kind: str, data: Path) -> Path:
    """A checkpoint of a randomly initialised encoder, written with pretrain.checkpoint.save_checkpoint."""
    model = {"encoder": "dcgan", "depth": 2, "kwargs": {}} if kind == "infomax" else {"encoder": "resnet50", "depth": None, "kwargs": {}}
    config = {"model": model, "task": {"kind": "infomax" if kind == "infomax" else "jigsaw-ce", "estimator": None},
              "data": {"shards": str(data), "size": 32}}
    torch.manual_seed(0)
    kwargs = dict(model["kwargs"], **({"depth": model["depth"]} if model["depth"] else {}))
    task = _Task(build_encoder(model["encoder"], **kwargs))
    return save_checkpoint(out / checkpoint_dir_name(0), step=0, config=config, task=task,
                           optimizer=torch.optim.Adam(task.parameters()), eta_optimizer=None, rng=[capture_rng()],
                           data_position=[0], permutations=None)


def usual_probe(encoder, data, splits, kind, num_classes, *, epochs, seed, lr, batch_size) -> tuple[dict, float]:
    """The usual probe: every epoch streams the train images through the frozen encoder, then steps."""
    t0 = time.perf_counter()
    probe, opt = None, None
    for _ in range(epochs):
        for batch in eval_loader(data, splits[0], kind=kind, batch_size=batch_size):
            feats = encode_batch(encoder, batch, kind)
            if probe is None:
                probe, opt = make_probe(feats.shape[1], num_classes, seed, lr)
            probe_step(probe, opt, feats, batch["label"])
    test = extract_features(encoder, eval_loader(data, splits[1], kind=kind, batch_size=batch_size), kind, progress=False)
    acc = topk_accuracy(probe_scores(probe, test["features"]), test["labels"], KS)
    return {f"top{k}": acc[k] for k in KS}, time.perf_counter() - t0


def cached_probe(encoder, data, splits, kind, num_classes, *, epochs, seed, lr, batch_size) -> tuple[dict, float, float]:
    """Extract train and test features once, then the same probe on the tensors (same batches, no shuffle)."""
    t0 = time.perf_counter()
    train = extract_features(encoder, eval_loader(data, splits[0], kind=kind, batch_size=batch_size), kind, progress=False)
    test = extract_features(encoder, eval_loader(data, splits[1], kind=kind, batch_size=batch_size), kind, progress=False)
    t_extract = time.perf_counter() - t0
    res = train_linear_probe(train["features"], train["labels"], test["features"], test["labels"], num_classes, epochs=epochs,
                             seed=seed, lr=lr, batch_size=batch_size, shuffle=False, device="cpu", progress=False)
    return {f"top{k}": res[f"top{k}"] for k in KS}, time.perf_counter() - t0, t_extract


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["infomax", "jigsaw"], default="infomax",
                    help="infomax: DCGAN on 32×32 images; jigsaw: ResNet50 on the 9 eval patches of each image")
    ap.add_argument("--checkpoint", help="checkpoint to probe (default: a random-init encoder written under --work)")
    ap.add_argument("--data", help="shard directory (default: scikit-learn digits built under --work)")
    ap.add_argument("--work", default="runs/bench_linear_probe", help="where default shards and checkpoint go")
    ap.add_argument("--limit", type=int, help="default data only: keep this many train images (test: a quarter)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch (also the probe batch)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.kind
    data = Path(args.data) if args.data else build_digits_shards(work / "digits", 32, args.limit)
    checkpoint = args.checkpoint or random_checkpoint(work / "random-init", args.kind, data)
    encoder, config = load_encoder(checkpoint)
    manifest = read_manifest(data)
    splits = default_splits(manifest, None, None)
    num_classes = len(manifest["class_names"])
    kw = dict(epochs=args.epochs, seed=args.seed, lr=args.lr, batch_size=args.batch_size)
    acc_cached, t_cached, t_extract = cached_probe(encoder, str(data), splits, args.kind, num_classes, **kw)
    acc_usual, t_usual = usual_probe(encoder, str(data), splits, args.kind, num_classes, **kw)
    n = {s: manifest["splits"][s]["num_samples"] for s in splits}
    figures = {
        "kind": args.kind, "encoder": config["model"]["encoder"], "dataset": manifest["dataset"], "train": n[splits[0]],
        "test": n[splits[1]], "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
        "cached_seconds": t_cached, "cached_extract_seconds": t_extract, "usual_seconds": t_usual,
        "speedup": t_usual / t_cached, "cached": acc_cached, "usual": acc_usual,
        "max_abs_accuracy_difference": max(abs(acc_cached[k] - acc_usual[k]) for k in acc_cached),
    }
    print(f"{args.kind}: {figures['encoder']} on {figures['dataset']} ({figures['train']} train / {figures['test']} test), "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"cached features : {t_cached:8.2f} s  (extraction {t_extract:.2f} s, probe {t_cached - t_extract:.2f} s)  "
          + "  ".join(f"{k} {v:.2f}" for k, v in acc_cached.items()))
    print(f"usual (forward) : {t_usual:8.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in acc_usual.items()))
    print(f"speed-up {figures['speedup']:.1f}x; accuracies {'agree' if figures['max_abs_accuracy_difference'] == 0 else 'DIFFER'} "
          f"(max |difference| {figures['max_abs_accuracy_difference']:.3f} points)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if figures["max_abs_accuracy_difference"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
