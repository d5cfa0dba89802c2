"""What `train.online_probe=true` costs a training step, on the InfoMax demo config.

One rank in this process runs the demo's step (`pretrain.train.train_step`: forward, backward, Adam,
η) on synthetic batches of its shape, with and without the online probe's step after it, in
alternating blocks (so load from other jobs that comes and goes hits both), and reports the median
step time of each and the overhead; then times the probe's step by itself (median of many), the
figure that load from other jobs moves least. On one rank there is no all-reduce; under DDP the probe adds one
of its head's gradient (82K floats for the demo: 8,192 features × 10 classes) a step.

    nice -n 10 python benchmarks/online_probe_cost.py --out benchmarks/results/online_probe_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pretrain.config import load_config
from pretrain.online_probe import OnlineProbe
from pretrain.plan import example_batch
from pretrain.train import build_optimizers, build_task_from_config, train_step

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_infomax_eta.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=10, help="blocks of each kind, alternating")
    ap.add_argument("--steps", type=int, default=20, help="steps a block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(str(CONFIG), [])
    torch.manual_seed(0)
    task = build_task_from_config(cfg, None)
    main_opt, eta_opt = build_optimizers(cfg, task)
    probe = OnlineProbe(task.encoder, 10, lr=cfg.train.online_probe_lr, seed=0, device="cpu")
    batches = []
    for i in range(8):
        b = task.host_prepare(example_batch(cfg, None, seed=i))
        b["label"] = torch.arange(b["images"].shape[0]) % 10
        batches.append(b)
    step = 0

    def block(with_probe: bool) -> float:
        nonlocal step
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = batches[step % len(batches)]
            out = train_step(task, task, batch, step, main_opt, eta_opt)
            if with_probe:
                out["metrics"].update(probe.step(batch["label"]))
            else:  # the hook still keeps the features; drop them as the probe's step would
                probe.features = None
            step += 1
        return (time.perf_counter() - t0) / args.steps

    block(True), block(False)  # warm-up
    plain, probed = [], []
    for _ in range(args.blocks):
        plain.append(block(False))
        probed.append(block(True))
    p, q = statistics.median(plain), statistics.median(probed)
    alone = []  # the probe's step by itself, on the features of the last training step
    task(batches[0])  # a forward pass leaves its features to the probe's hook
    features = probe.features
    for i in range(10 * args.steps):
        probe.features = features
        t0 = time.perf_counter()
        probe.step(batches[i % len(batches)]["label"])
        alone.append(time.perf_counter() - t0)
    a = statistics.median(alone)
    out = {"config": CONFIG.name, "batch_size": cfg.data.batch_size, "threads": args.threads, "blocks": args.blocks,
           "steps_per_block": args.steps, "plain_step_ms": 1e3 * p, "probe_step_ms": 1e3 * q, "overhead": q / p - 1,
           "probe_alone_ms": 1e3 * a, "probe_alone_over_step": a / p,
           "plain_blocks_ms": [1e3 * t for t in plain], "probe_blocks_ms": [1e3 * t for t in probed]}
    print(f"{CONFIG.name}, batch {cfg.data.batch_size}, {args.threads} thread(s): step {1e3 * p:.1f} ms without the online probe, "
          f"{1e3 * q:.1f} ms with it ({100 * (q / p - 1):+.1f}%; medians of {args.blocks} alternating blocks of {args.steps} steps); "
          f"the probe's step alone {1e3 * a:.2f} ms ({100 * a / p:.1f}% of a step)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
