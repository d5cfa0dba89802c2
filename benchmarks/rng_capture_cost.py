"""What the per-micro-batch RNG restore and capture costs a training step on this machine's CPU.

With V virtual shards a rank runs V/W micro-batches a step, and ``pretrain.train.train_step`` restores
each one's RNG state (Python, NumPy, torch) before it and captures it after it
(``pretrain.checkpoint.restore_rng`` / ``capture_rng``). This script times, on one process and
``--micro`` micro-batches (V = 4, W = 1 by default):

all in CPU seconds of this process (``time.process_time``; one torch thread by default), which other
jobs' load on the machine stretches far less than wall time:

- ``rng_s``: the restore + capture of ``--micro`` states alone (the median of ``--repeats`` timings of
  one step's worth),
- ``step_s``: ``train_step`` with them (``rng=``) and without (``rng=None``), alternated so that load
  from other jobs hits both, medians;

and prints ``rng_s / step_s`` (the share of a step the RNG bookkeeping takes) for the tests' two
smallest steps (so the largest shares): jigsaw and InfoMax (η-MINE, 8 images) on a depth-2 DCGAN.

    nice -n 10 python benchmarks/rng_capture_cost.py
    python benchmarks/rng_capture_cost.py --quick       # seconds: every part runs, the figures mean nothing
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pretrain import virtual_shards
from pretrain.checkpoint import capture_rng, restore_rng
from pretrain.config import load_config
from pretrain.plan import example_batch, task_on_example_batch
from pretrain.train import permutations_of, train_step

CONFIGS = {
    "jigsaw-dcgan-depth2": ["task.kind=jigsaw-ce", "model.encoder=dcgan", "model.depth=2", "model.kwargs.image_size=64",
                            "data.images_per_batch=2", "data.perms_per_image=4", "data.num_permutations=10"],
    "infomax-dcgan-depth2-b8": ["task.kind=infomax", "task.estimator=eta-mine", "model.encoder=dcgan", "model.depth=2",
                                "data.batch_size=8"],
}


def rng_seconds(micro: int, repeats: int) -> float:
    """Median seconds of one step's RNG bookkeeping: ``micro`` restores and captures."""
    states = virtual_shards.seeded_rng(0, range(micro))
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for j in range(micro):
            restore_rng(states[j])
            states[j] = capture_rng()
        times.append(time.process_time() - start)
    return statistics.median(times)


def step_seconds(overrides: list[str], micro: int, repeats: int) -> dict:
    """Median seconds of ``train_step`` over ``micro`` micro-batches with and without the RNG states."""
    cfg = load_config(None, ["data.shards=/nonexistent", "train.threads_per_worker=1", *overrides])
    task, main_opt, eta_opt, _ = task_on_example_batch(cfg)
    permutations = permutations_of(cfg)
    batches = [task.host_prepare(example_batch(cfg, permutations, seed=j)) for j in range(micro)]
    buffers = virtual_shards.StepBuffers(task)
    rng = virtual_shards.seeded_rng(0, range(micro))
    times = {"with_rng": [], "without_rng": []}
    for step in range(repeats + 1):  # the first of each is untimed (allocation, first calls)
        for arm in ("with_rng", "without_rng"):
            start = time.process_time()
            train_step(task, task, batches, step, main_opt, eta_opt, rng=rng if arm == "with_rng" else None, buffers=buffers)
            if step:
                times[arm].append(time.process_time() - start)
    return {arm: statistics.median(t) for arm, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--micro", type=int, default=4, help="micro-batches a step (V/W)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps of each arm (the RNG timing: 50×)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="2 repeats of the InfoMax config only")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    repeats = 2 if a.quick else a.repeats
    rng_s = rng_seconds(a.micro, repeats * 50)
    results = {"micro_batches": a.micro, "threads": a.threads, "repeats": repeats, "torch": torch.__version__,
               "rng_s_per_step": rng_s, "configs": {}}
    print(f"RNG restore + capture of {a.micro} micro-batches: {rng_s * 1e3:.3f} ms of CPU a step (median of {repeats * 50})")
    for name, overrides in list(CONFIGS.items())[-1 if a.quick else 0:]:
        s = step_seconds(overrides, a.micro, repeats)
        share = rng_s / s["with_rng"]
        results["configs"][name] = {**s, "rng_share_of_step": share}
        print(f"{name}: step {s['with_rng'] * 1e3:.1f} ms of CPU with the RNG states, {s['without_rng'] * 1e3:.1f} ms without "
              f"(medians of {repeats}); the RNG bookkeeping is {share:.2%} of the step")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
