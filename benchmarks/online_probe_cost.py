"""What `train.online_probe=true` costs a training step, on the demo configs (InfoMax and jigsaw).

One rank in this process runs a demo's step (`pretrain.train.train_step`: forward, backward, Adam, η)
on synthetic batches of its shape, with and without the online probe's step after it, in alternating
blocks (`side_by_side.time_alternately`: load from other jobs that comes and goes hits both), and
reports the median step time of each and the overhead; then times the probe's step by itself (median
of many), the figure that load from other jobs moves least. On one rank there is no all-reduce; under
DDP the probe adds one of its head's gradient (features × classes + classes floats: 82K for the
InfoMax demo's 8,192 features × 10 classes) a step.

    PYTHONPATH=. nice -n 10 python benchmarks/online_probe_cost.py --out benchmarks/results/online_probe_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.side_by_side import medians, time_alternately
from pretrain import tasks
from pretrain.config import load_config
from pretrain.online_probe import OnlineProbe
from pretrain.plan import example_batch
from pretrain.train import build_optimizers, build_task_from_config, permutations_of, train_step

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def measure(config: Path, blocks: int, steps: int, classes: int = 10) -> dict:
    """The medians of `blocks` alternating blocks of `steps` steps of `config`'s task, with and without the probe."""
    cfg = load_config(str(config), [])
    permutations = permutations_of(cfg)
    torch.manual_seed(0)
    task = build_task_from_config(cfg, permutations)
    main_opt, eta_opt = build_optimizers(cfg, task)
    kind = tasks.spec(cfg.task.kind).eval_kind
    probe = OnlineProbe(task.encoder, classes, lr=cfg.train.online_probe_lr, seed=0, device="cpu", kind=kind)
    batches = []
    for i in range(8):
        b = task.host_prepare(example_batch(cfg, permutations, seed=i))
        b["label"] = (b["image_index"] if "image_index" in b else torch.arange(b["images"].shape[0])) % classes
        batches.append(b)
    step = 0

    def block(with_probe: bool) -> None:
        nonlocal step
        for _ in range(steps):
            batch = batches[step % len(batches)]
            out = train_step(task, task, batch, step, main_opt, eta_opt)
            if with_probe:
                out["metrics"].update(probe.step(batch))
            else:  # the hook still keeps the features; drop them as the probe's step would
                probe.features = None
            step += 1

    seconds = time_alternately({"plain": lambda: block(False), "probe": lambda: block(True)}, rounds=blocks)
    m = medians(seconds)
    p, q = m["plain"] / steps, m["probe"] / steps
    alone = []  # the probe's step by itself, on the features of the last training step
    task(batches[0])  # a forward pass leaves its features to the probe's hook
    features = probe.features
    for i in range(10 * steps):
        probe.features = features
        t0 = time.perf_counter()
        probe.step(batches[0])
        alone.append(time.perf_counter() - t0)
    a = statistics.median(alone)
    return {"config": config.name, "task": cfg.task.kind, "feature_dim": task.encoder.feature_dim,
            "batch": cfg.data.batch_size if kind == "infomax" else f"{cfg.data.images_per_batch} images x {cfg.data.perms_per_image} perms",
            "plain_step_ms": 1e3 * p, "probe_step_ms": 1e3 * q, "overhead": q / p - 1,
            "probe_alone_ms": 1e3 * a, "probe_alone_over_step": a / p,
            "plain_blocks_ms": [1e3 * t / steps for t in seconds["plain"]], "probe_blocks_ms": [1e3 * t / steps for t in seconds["probe"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["demo_infomax_eta.yaml", "demo_jigsaw_eta.yaml"], help="in configs/")
    ap.add_argument("--blocks", type=int, default=10, help="blocks of each kind, alternating")
    ap.add_argument("--steps", type=int, default=20, help="steps a block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(CONFIGS / name, args.blocks, args.steps) for name in args.configs]
    for r in rows:
        print(f"{r['config']} ({r['task']}, batch {r['batch']}, {r['feature_dim']:,} features), {args.threads} thread(s): "
              f"step {r['plain_step_ms']:.1f} ms without the online probe, {r['probe_step_ms']:.1f} ms with it "
              f"({100 * r['overhead']:+.1f}%; medians of {args.blocks} alternating blocks of {args.steps} steps); "
              f"the probe's step alone {r['probe_alone_ms']:.2f} ms ({100 * r['probe_alone_over_step']:.1f}% of a step)")
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": args.threads, "blocks": args.blocks, "steps_per_block": args.steps,
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
