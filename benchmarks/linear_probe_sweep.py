"""The one-pass sweep (`eval.linear protocol=sweep`) against K separate probes, on cached features.

K heads (the default grid: 4 learning rates × 3 weight decays = 12) trained in one pass an epoch
(`eval.sweep.train_sweep`) against the same K heads trained one after another with the one-head probe
(`eval.probe.train_linear_probe`, each scored on the held-out share), and against one head alone.
The sweep and one head (the grid's first, on the fit part of the split, made beforehand) are timed
side by side, alternating (`side_by_side.time_alternately`), `--rounds` times; the K separate runs
once. Prints the median wall clock of each, the ratios, and the largest difference in held-out top-1
between a head of the sweep and the same head trained alone (0: the same predictions).

    PYTHONPATH=. nice -n 10 python benchmarks/linear_probe_sweep.py --out benchmarks/results/linear_probe_sweep.json

The features are random with labels from a random linear map (the cost does not depend on what they
mean); `--dim 8192 --classes 10` is the InfoMax DCGAN's (depth 2 on 32×32, CIFAR-10), `--dim 2048
--classes 1000` ResNet50 on ImageNet.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.side_by_side import medians, time_alternately
from eval.config import LinearConfig
from eval.probe import train_linear_probe
from eval.sweep import holdout_split, sweep_grid, train_sweep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10_000, help="train features (a tenth is held out)")
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady numbers on a shared machine)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timings of the sweep and one head (medians)")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.train, args.dim, generator=g)
    y = (x @ torch.randn(args.dim, args.classes, generator=g)).argmax(1)
    defaults = LinearConfig(checkpoint="-", data="-")
    grid = sweep_grid(defaults.sweep_lrs, defaults.sweep_weight_decays, defaults.sweep_batchnorm)
    fit, held = holdout_split(args.train, defaults.holdout_share, defaults.holdout_seed)
    kw = dict(epochs=args.epochs, seed=0, batch_size=args.batch_size, device="cpu", progress=False)

    # warm-up (first-call allocations and kernel selection), not timed
    train_sweep(x[:512], y[:512], args.classes, grid, **{**kw, "epochs": 1})
    train_linear_probe(x[:512], y[:512], x[:64], y[:64], args.classes, ks=(1,), **{**kw, "epochs": 1})

    sweep_kw = dict(holdout_share=defaults.holdout_share, holdout_seed=defaults.holdout_seed, **kw)
    xf, yf, xh, yh = x[fit], y[fit], x[held], y[held]
    sweeps = []  # every timed sweep's result (the same each time)
    timed = time_alternately({
        "sweep": lambda: sweeps.append(train_sweep(x, y, args.classes, grid, **sweep_kw)),
        "one_head": lambda: train_linear_probe(xf, yf, xh, yh, args.classes, lr=grid[0]["lr"], weight_decay=grid[0]["weight_decay"],
                                               batchnorm=grid[0]["batchnorm"], ks=(1,), **kw),
    }, rounds=args.rounds, warmup=0)
    sweep_s, one_head_s = medians(timed).values()
    sweep = sweeps[-1]

    separate_s, separate_top1 = [], []
    for head in grid:
        t0 = time.perf_counter()
        res = train_linear_probe(xf, yf, xh, yh, args.classes, lr=head["lr"], weight_decay=head["weight_decay"],
                                 batchnorm=head["batchnorm"], ks=(1,), **kw)
        separate_s.append(time.perf_counter() - t0)
        separate_top1.append(res["top1"])
    diff = max(abs(h["heldout_top1"] - t) for h, t in zip(sweep["heads"], separate_top1))
    out = {
        "train": args.train, "heldout": int(held.numel()), "dim": args.dim, "classes": args.classes, "epochs": args.epochs,
        "batch_size": args.batch_size, "threads": args.threads, "heads": len(grid), "rounds": args.rounds,
        "sweep_rounds_seconds": timed["sweep"], "one_head_rounds_seconds": timed["one_head"],
        "sweep_seconds": sweep_s, "one_head_seconds": one_head_s, "separate_seconds": sum(separate_s),
        "sweep_over_one_head": sweep_s / one_head_s, "separate_over_sweep": sum(separate_s) / sweep_s,
        "max_heldout_top1_difference": diff,
    }
    print(f"{len(grid)} heads on {args.train:,} × {args.dim:,} features, {args.classes} classes, {args.epochs} epochs, "
          f"{args.threads} thread(s): one pass {sweep_s:.2f} s; one head {one_head_s:.2f} s (medians of {args.rounds} alternating) "
          f"({out['sweep_over_one_head']:.2f}× one head); {len(grid)} separate runs {sum(separate_s):.2f} s "
          f"({out['separate_over_sweep']:.2f}× the one pass); largest held-out top-1 difference {diff:.3g} points")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
